"""Stream a (date, code) panel into the cache's dense per-date layout, in bounded memory.

Two passes over the source, chunk by chunk (parquet record batches, or slices of an in-memory
frame), never the whole panel at once:

1. **Keys**: only the ``date`` and ``code`` columns. Gives the sorted unique dates and codes,
   every row's (date index, code index) as two int32 arrays (8 bytes a row), the duplicate
   check, and whether the rows come in date order.
2. **Values**: feature and target columns. Rows are scattered into one dense ``(stocks,
   features)`` block per date; a date is written out (one Arrow record batch) as soon as no
   later row can belong to it. A date-ordered source (what panel exports are) is read once,
   holding only the dates a chunk spans. Any other order is read once per block of dates that
   fits ``BLOCK_BYTES``, so memory stays bounded either way; the log says so.

Per date and feature the build also records the count, mean and sum of squared deviations of
the present, finite values, so a trainer gets exact statistics for any set of training dates
from ``(dates, features)`` arrays instead of a pass over the panel.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Full, Queue
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from cache._panel import (
    _codes,
    _dates,
    _float32_matrix,
    _listing,
    check_value_types,
    resolve_columns,
)
from cache._source import Source, _first_line
from cache.errors import CacheError, writing
from cache.feature_cache import batch_schema
from cache.spec import CODE_COLUMN, DATE_COLUMN, CacheSpec

log = logging.getLogger("cache")

# Source rows per chunk: the float32 copy of a chunk is CHUNK_ROWS x columns x 4 bytes
# (80 MB at 300 columns), a small fraction of a seed-sized panel's 12 GB.
CHUNK_ROWS = 65_536
# Dense date blocks held at once when the source is not in date order (see module docstring).
BLOCK_BYTES = 1 << 30
# Chunks decoded ahead of the one being scattered (see _prefetched).
PREFETCH = 2
STATS_FILE = "stats.npz"


@dataclass
class Keys:
    """Pass 1: where every source row goes."""

    dates: np.ndarray  # (D,) datetime64[D], ascending
    codes: list[str]  # (S,) sorted
    date_index: np.ndarray  # (rows,) int32, in source order
    code_index: np.ndarray  # (rows,) int32
    date_ordered: bool  # rows never go back to an earlier date


@dataclass
class Built:
    """What the value pass found, for the manifest."""

    rows: int
    n_dates: int
    n_codes: int
    bad_values: dict[str, int] = field(default_factory=dict)  # column -> NaN/inf/null count
    missing_feature_values: int = 0  # present rows x features that are NaN after the policy
    rows_with_missing_feature: int = 0
    rows_with_target: list[int] = field(default_factory=list)  # per target column
    passes: int = 1


# -- reading the source in chunks ------------------------------------------------------------
def iter_chunks(source: Source, frame: pl.DataFrame | None, columns: list[str],
                convert: Callable[[pl.DataFrame], Any] | None = None) -> Iterator[Any]:
    """The source's ``columns`` in row order, ``CHUNK_ROWS`` rows at a time; each chunk goes
    through ``convert`` first when given (on the read-ahead thread for a parquet file)."""
    if frame is not None:
        sub = frame.select(columns)
        for start in range(0, max(sub.height, 1), CHUNK_ROWS):
            chunk = sub.slice(start, CHUNK_ROWS)
            yield chunk if convert is None else convert(chunk)
        return
    assert source.path is not None and source.kind == "parquet"
    chunks = (source.canonical(c) for c in _parquet_chunks(
        source.path, [source.source_name(c) for c in columns]))
    yield from _prefetched(chunks if convert is None else map(convert, chunks))


def value_matrices(features: list[str], targets: list[str]
                   ) -> Callable[[pl.DataFrame], tuple[np.ndarray, np.ndarray]]:
    """Chunk -> (x (n, F), y (n, H)) float32 C-contiguous, NaN where null: the value pass's
    row-major copy, made while the next chunk decodes."""
    def convert(chunk: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return _float32_matrix(chunk, features), _float32_matrix(chunk, targets)

    return convert


def _parquet_chunks(path: Path, columns: list[str]) -> Iterator[pl.DataFrame]:
    try:
        reader = pq.ParquetFile(path)
        # One row group at a time: a single iter_batches over the whole file keeps decoded
        # pages alive across row groups (measured: memory grew with the file, 269 MB on a
        # 160 MB panel, and ran 10x slower); per group it stays near one group's size.
        for group in range(reader.metadata.num_row_groups):
            for batch in reader.iter_batches(batch_size=CHUNK_ROWS, row_groups=[group],
                                             columns=columns):
                yield pl.from_arrow(pa.Table.from_batches([batch]), rechunk=False)
    except (pa.ArrowException, OSError) as exc:
        raise CacheError(f"cannot read parquet {path}: {_first_line(exc)}") from exc


def _prefetched(chunks: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    """``chunks`` decoded one ahead in a thread: parquet decoding and the caller's numpy work
    both release the GIL, so on two cores they overlap. At most PREFETCH chunks wait."""
    queue: Queue[Any] = Queue(maxsize=PREFETCH)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        queue.put(chunk, timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            queue.put(exc)

    worker = threading.Thread(target=produce, name="cache-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item = queue.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                queue.get(timeout=0.1)
            except Empty:
                pass
        worker.join()


def read_keys(chunks: Iterator[pl.DataFrame], where: str) -> Keys:
    """Pass 1 over the key columns (see the module docstring)."""
    day_parts: list[np.ndarray] = []
    code_parts: list[pl.Series] = []
    rows = 0
    for chunk in chunks:
        if chunk.height == 0:
            continue
        days = _dates(chunk.get_column(DATE_COLUMN), where).cast(pl.Int32).to_numpy()
        day_parts.append(days.astype(np.int32, copy=False))
        code_parts.append(_codes(chunk.get_column(CODE_COLUMN), where))
        rows += chunk.height
    if rows == 0:
        raise CacheError(f"{where} has no rows")
    days = np.concatenate(day_parts)
    del day_parts
    unique_days, date_index = np.unique(days, return_inverse=True)
    date_ordered = bool(np.all(days[1:] >= days[:-1]))
    del days
    codes = pl.concat(code_parts)
    del code_parts
    unique_codes = codes.unique().sort()
    # Codes -> index by a join on the sorted uniques (a hash join, linear in rows).
    lookup = pl.DataFrame({CODE_COLUMN: unique_codes,
                           "i": np.arange(len(unique_codes), dtype=np.int32)})
    code_index = (pl.DataFrame({CODE_COLUMN: codes}).join(lookup, on=CODE_COLUMN, how="left",
                                                          maintain_order="left")
                  .get_column("i").to_numpy().astype(np.int32, copy=False))
    del codes
    date_index = date_index.astype(np.int32, copy=False)
    n_codes = len(unique_codes)
    cells = date_index.astype(np.int64) * n_codes + code_index
    counts = np.bincount(cells, minlength=len(unique_days) * n_codes)
    n_dup = int((counts > 1).sum())
    if n_dup:
        cell = int(np.argmax(counts > 1))
        day = np.datetime64(int(unique_days[cell // n_codes]), "D")
        raise CacheError(
            f"{where} has {n_dup} duplicate (date, code) row(s), e.g. ({day}, "
            f"{unique_codes[cell % n_codes]}); keep one row per stock and date")
    return Keys(dates=unique_days.astype("datetime64[D]"), codes=unique_codes.to_list(),
                date_index=date_index, code_index=code_index, date_ordered=date_ordered)


# -- the value pass ----------------------------------------------------------------------------
class _Stats:
    """Per-date, per-feature count / mean / M2 of the present finite values."""

    def __init__(self, n_dates: int, n_features: int, n_targets: int) -> None:
        self.count = np.zeros((n_dates, n_features), dtype=np.int32)
        self.mean = np.zeros((n_dates, n_features), dtype=np.float64)
        self.m2 = np.zeros((n_dates, n_features), dtype=np.float64)
        self.present = np.zeros(n_dates, dtype=np.int32)
        self.target_count = np.zeros((n_dates, n_targets), dtype=np.int32)

    def add(self, d: int, x: np.ndarray, finite: np.ndarray, n: np.ndarray,
            n_target: np.ndarray, n_present: int) -> None:
        """x: (S, F) with NaN (only) where ``finite`` is False; n: finite values per feature.

        Float32 passes with float64 accumulation (a build spends most of its compute here):
        sum, then the squared deviations about that mean, so there is no cancellation."""
        x0 = np.where(finite, x, np.float32(0.0))
        mean = x0.sum(axis=0, dtype=np.float64) / np.maximum(n, 1)
        np.subtract(x0, mean.astype(np.float32), out=x0, where=finite)  # 0 stays 0 elsewhere
        self.count[d], self.mean[d] = n, mean
        self.m2[d] = np.einsum("ij,ij->j", x0, x0, dtype=np.float64)
        self.present[d] = n_present
        self.target_count[d] = n_target

    def save(self, path: Path) -> None:
        with writing(path), open(path, "wb") as f:
            np.savez(f, count=self.count, mean=self.mean, m2=self.m2, present=self.present,
                     target_count=self.target_count)
            f.flush()
            os.fsync(f.fileno())


def _date_batch(schema: pa.Schema, x: np.ndarray, y: np.ndarray, present: np.ndarray
                ) -> pa.RecordBatch:
    """One date: x (S, F), y (S, H) float32 C-contiguous, present (S,) bool -> a batch whose
    list columns' child buffers are those bytes."""
    def block(matrix: np.ndarray) -> pa.FixedSizeListArray:
        return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])

    return pa.record_batch([block(x), block(y), pa.array(present.view(np.uint8))],
                           schema=schema)


class _DateWriter:
    """The last stage of the value pass, on its own thread: each complete date's checks,
    statistics and Arrow batch. The scattering thread hands dates over in order through a
    short queue (a few dates' blocks, so memory stays bounded) and gets the written blocks
    back for reuse; numpy and Arrow's writer release the GIL, so on two cores the stages
    overlap with each other and with parquet decoding."""

    QUEUE_DATES = 4

    def __init__(self, writer: pa.ipc.RecordBatchFileWriter, schema: pa.Schema, *,
                 stats: _Stats, built: Built, bad: np.ndarray, n_feat: int,
                 fill: float | None) -> None:
        self.writer, self.schema, self.stats, self.built = writer, schema, stats, built
        self.bad, self.n_feat, self.fill = bad, n_feat, fill
        self.spare: Queue[tuple[np.ndarray, np.ndarray, np.ndarray]] = Queue()
        self._todo: Queue[Any] = Queue(maxsize=self.QUEUE_DATES)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cache-write", daemon=True)
        self._thread.start()

    def put(self, d: int, blocks: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._todo.put((d, blocks), timeout=0.1)
                return
            except Full:
                continue

    def close(self) -> None:
        """Wait until every handed-over date is written; raise the writer's error if any."""
        if self._thread.is_alive():
            while self._error is None:
                try:
                    self._todo.put(None, timeout=0.1)
                    break
                except Full:
                    continue
            self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            while (item := self._todo.get()) is not None:
                d, blocks = item
                self._write(d, *blocks)
                self.spare.put(blocks)
        except BaseException as exc:  # raised in the scattering thread
            self._error = exc
            while True:  # let a blocked put() see the error
                try:
                    self._todo.get_nowait()
                except Empty:
                    break

    def _write(self, d: int, x: np.ndarray, y: np.ndarray, present: np.ndarray) -> None:
        """One date: x (S, F), y (S, H), absent rows all NaN. No compaction to the present
        rows: a NaN/inf count over present rows is "present rows - finite values"."""
        n_present = int(np.count_nonzero(present))
        finite = np.isfinite(x)
        n_finite = finite.sum(axis=0)
        n_bad = n_present - n_finite
        self.bad[: self.n_feat] += n_bad
        finite_y = np.isfinite(y)
        self.bad[self.n_feat:] += n_present - finite_y.sum(axis=0)
        # Targets are never filled: a missing target is NaN, masked by every consumer.
        inf_y = np.isinf(y)
        if inf_y.any():
            y[inf_y] = np.nan
        if n_bad.any():
            if self.fill is not None:
                replace_ = ~finite
                replace_[~present] = False  # absent rows stay NaN
                x[replace_] = self.fill
                finite = np.isfinite(x)
                n_finite = finite.sum(axis=0)
            else:
                inf = np.isinf(x)
                if inf.any():
                    x[inf] = np.nan  # NaN is the one missing marker
                self.built.missing_feature_values += int(n_bad.sum())
                self.built.rows_with_missing_feature += int(np.count_nonzero(
                    present & ~finite.all(axis=1)))
        self.stats.add(d, x, finite, n_finite, finite_y.sum(axis=0), n_present)
        self.writer.write_batch(_date_batch(self.schema, x, y, present))


def write_dense(data_path: Path, stats_path: Path, *, keys: Keys,
                chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
                features: list[str], targets: list[str], spec: CacheSpec,
                metadata: dict[bytes, bytes], where: str) -> Built:
    """Pass 2: write the per-date Arrow batches and the statistics; returns the counts.

    ``chunks()`` starts a fresh iteration over the value columns in the same row order as
    pass 1, as ``(x, y)`` matrices (``value_matrices``). Three stages run at once: decoding
    (``iter_chunks``' thread), scattering rows into dense date blocks (this thread) and
    writing finished dates (``_DateWriter``).
    """
    n_dates, n_codes = len(keys.dates), len(keys.codes)
    n_feat, n_targ = len(features), len(targets)
    schema = batch_schema(n_feat, n_targ, metadata)
    stats = _Stats(n_dates, n_feat, n_targ)
    bad = np.zeros(n_feat + n_targ, dtype=np.int64)
    built = Built(rows=len(keys.date_index), n_dates=n_dates, n_codes=n_codes)
    fill = float(spec.fill_value) if spec.nan_policy == "fill" else None
    row_bytes = n_codes * (n_feat + n_targ) * 4
    if keys.date_ordered:
        blocks = [(0, n_dates)]
    else:
        per_block = max(1, BLOCK_BYTES // max(row_bytes, 1))
        blocks = [(d0, min(n_dates, d0 + per_block)) for d0 in range(0, n_dates, per_block)]
        if len(blocks) > 1:
            log.warning("%s is not sorted by date: reading it %d times to stay within %d MB; "
                        "sort it by date to build in one pass", where, len(blocks),
                        BLOCK_BYTES >> 20)
    built.passes = len(blocks)
    open_dates: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    next_to_write = 0

    def date_block(d: int, out: _DateWriter) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if d not in open_dates:
            try:  # a written date's blocks: refilling beats faulting in fresh pages
                x, y, present = out.spare.get_nowait()
                x.fill(np.nan)
                y.fill(np.nan)
                present.fill(False)
                open_dates[d] = (x, y, present)
            except Empty:
                open_dates[d] = (np.full((n_codes, n_feat), np.nan, dtype=np.float32),
                                 np.full((n_codes, n_targ), np.nan, dtype=np.float32),
                                 np.zeros(n_codes, dtype=bool))
        return open_dates[d]

    def finish(out: _DateWriter, upto: int) -> None:
        """Hand every date below ``upto`` (all of them are complete) to the writer."""
        nonlocal next_to_write
        while next_to_write < upto:
            out.put(next_to_write, open_dates.pop(next_to_write))
            next_to_write += 1

    with pa.OSFile(str(data_path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        out = _DateWriter(writer, schema, stats=stats, built=built, bad=bad, n_feat=n_feat,
                          fill=fill)
        try:
            for d0, d1 in blocks:
                start = 0
                for x, y in chunks():
                    stop = start + len(x)
                    d_idx = keys.date_index[start:stop]
                    c_idx = keys.code_index[start:stop]
                    start = stop
                    take = (d_idx >= d0) & (d_idx < d1)
                    if not take.any():
                        continue
                    if not take.all():
                        x, y, d_idx, c_idx = x[take], y[take], d_idx[take], c_idx[take]
                    # Rows of one date form runs; scatter each run into its dense block.
                    cuts = np.flatnonzero(np.diff(d_idx)) + 1
                    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(d_idx)], strict=True):
                        bx, by, bp = date_block(int(d_idx[lo]), out)
                        rows = c_idx[lo:hi]
                        bx[rows], by[rows], bp[rows] = x[lo:hi], y[lo:hi], True
                    if keys.date_ordered:
                        finish(out, int(d_idx[-1]))  # the last date may go on in the next chunk
                finish(out, d1)
        finally:
            out.close()
    if start != built.rows:
        raise CacheError(f"{where} changed between the two reads of the build; try again")
    names = [*features, *targets]
    built.bad_values = {n: int(c) for n, c in zip(names, bad, strict=True) if c}
    built.rows_with_target = [int(c) for c in stats.target_count.sum(axis=0)]
    bad_features = {n: c for n, c in built.bad_values.items() if n in features}
    if bad_features and spec.nan_policy == "refuse":
        listed = [f"{n} ({c})" for n, c in bad_features.items()]
        raise CacheError(
            f"{where} has NaN/inf/null values in {len(listed)} feature column(s): "
            f"{_listing(listed)}; nan_policy 'refuse' stops here: use 'mask' (keep the rows, "
            "the trainer imputes and masks each missing value) or 'fill' (replace with "
            "fill_value)")
    stats.save(stats_path)
    return built


def columns_of(source: Source, frame: pl.DataFrame | None, spec: CacheSpec, *, where: str,
               schema: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(features, targets) of the source, checked for presence and numeric type."""
    features, targets = resolve_columns(schema, spec, where=where, typed=True)
    if frame is not None:
        check_value_types(frame, features, targets, where)
    else:
        problems = [f"{kind} column {name!r} is not numeric (dtype {schema[name]})"
                    for kind, names in (("feature", features), ("target", targets))
                    for name in names if not schema[name].is_numeric()]
        if problems:
            raise CacheError(f"{where}: " + "; ".join(problems))
    return features, targets
