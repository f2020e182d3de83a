"""The on-disk cache format, and :class:`FeatureCache`, its memory-mapped reader.

A cache is one directory ``<cache_root>/<key>/``::

    data.arrow     Arrow IPC file, uncompressed, ONE record batch PER DATE (D batches, in date
                   order), each with one row per stock code (S rows, the same codes every date):
                     features  fixed_size_list<float32>[n_features]  NaN = missing or absent
                     targets   fixed_size_list<float32>[n_targets]   NaN = missing (never filled)
                     present   uint8 0/1: the (date, code) row exists in the source
    stats.npz      per date and feature: count, mean, m2 (sum of squared deviations) of the
                   present finite values; rows present and targets known per date
    index.npz      dates (D,) datetime64[D], codes (S,) str
    manifest.json  schema, counts, NaN report, format version, source and spec hashes
    sidecars/      arrays derived from this cache (e.g. correlation graphs)

This is the layout training reads: a (dates, stocks, features) block. Every batch has the same
shape, so the batches' feature buffers lie at one fixed stride in the file, and mapping the file
gives numpy and torch a ``(D, S, F)`` view with strides ``(stride, F * 4, 4)`` without a copy
(the reader checks the stride on every batch). A lookback window of a date is then a slice, and
the panel lives once in the page cache, shared by every worker on the host, whatever its size.
Absent stocks cost their NaN bytes (a panel whose stocks list and delist wastes the absent
share); the trade buys constant-time windows with no row index.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import re
import struct
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from cache._io import atomic_write
from cache._source import new_hash
from cache.errors import CacheError

if TYPE_CHECKING:
    import torch

FORMAT_NAME = "hpo-feature-cache"
FORMAT_VERSION = 3  # 3: dense per-date batches, per-date statistics, streaming build
DATA_FILE = "data.arrow"
INDEX_FILE = "index.npz"
MANIFEST_FILE = "manifest.json"
SIDECAR_DIR = "sidecars"
META_KEY = b"hpo_cache_key"
META_VERSION = b"hpo_cache_format_version"
SIDECAR_META = "__sidecar__"
STATS_FILE = "stats.npz"
MANIFEST_KEYS = ("key", "rows", "n_dates", "n_codes", "feature_names", "target_names", "files",
                 "source", "spec", "nan", "schema", "created_at")
_SIDECAR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the cache at ``path``, checked for format and version."""
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CacheError(f"no feature cache at {path} (no {MANIFEST_FILE}); build one with "
                         "python -m cache.build")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise CacheError(f"cache manifest {manifest_path} is unreadable ({exc}); delete {path} "
                         "and rebuild") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CacheError(f"{manifest_path} is not a feature-cache manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CacheError(f"cache {path} was written by cache format version {version}, this "
                         f"code reads version {FORMAT_VERSION}; delete it and rebuild (python "
                         "-m cache.build, or load_or_build builds a new one beside it)")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise CacheError(f"cache manifest {manifest_path} lacks {', '.join(missing)}; delete "
                         f"{path} and rebuild")
    return manifest


def batch_schema(n_features: int, n_targets: int, metadata: dict[bytes, bytes] | None = None
                 ) -> pa.Schema:
    """The schema of every record batch in ``data.arrow``."""
    return pa.schema([
        pa.field("features", pa.list_(pa.float32(), n_features), nullable=False),
        pa.field("targets", pa.list_(pa.float32(), n_targets), nullable=False),
        # uint8, not Arrow bool: Arrow packs bools into bits, which numpy cannot view.
        pa.field("present", pa.uint8(), nullable=False),
    ], metadata=metadata)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


class FeatureCache:
    """A built cache, memory-mapped: every array below is a view onto the file's pages.

    The mapping is private copy-on-write: pages are shared with the page cache (and so with
    every other process reading the cache) until written. The numpy arrays are read-only so
    that a stray in-place write fails loudly; the tensors from :meth:`features_torch` are
    writable, and a write to one changes only this process's copy of that page, never the
    file or another reader.

    Attributes:
        features: (D, S, F) float32 view (not C-contiguous: dates lie at the file's batch
            stride); NaN where a value is missing or the stock is absent that date.
        targets: (D, S, H) float32 view; NaN where the target is missing.
        present: (D, S) bool: the (date, code) row exists in the source.
        dates: (D,) datetime64[D], ascending. codes: S sorted stock codes.
        stats: per-date feature statistics, see :meth:`feature_moments`.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.key: str = self.manifest["key"]
        self.feature_names: tuple[str, ...] = tuple(self.manifest["feature_names"])
        self.target_names: tuple[str, ...] = tuple(self.manifest["target_names"])
        data_path = self.path / DATA_FILE
        try:
            n_dates, n_codes = int(self.manifest["n_dates"]), int(self.manifest["n_codes"])
            expected_bytes = int(self.manifest["files"][DATA_FILE])
        except (KeyError, TypeError, ValueError) as exc:
            raise CacheError(f"cache manifest {self.path / MANIFEST_FILE} is damaged (bad "
                             f"n_dates, n_codes or files: {exc!r}); delete {self.path} and "
                             "rebuild") from exc
        try:
            actual_bytes = data_path.stat().st_size
        except FileNotFoundError:
            raise CacheError(f"cache {self.path} has no {DATA_FILE}; rebuild it") from None
        if actual_bytes != expected_bytes:
            raise CacheError(f"cache file {data_path} has {actual_bytes} bytes, its manifest "
                             f"says {expected_bytes}; the cache is damaged, rebuild it")
        fd = os.open(data_path, os.O_RDONLY)
        try:
            self._mm = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
        finally:
            os.close(fd)  # the mapping keeps its own reference to the file
        whole = pa.py_buffer(self._mm)
        try:
            reader = pa.ipc.open_file(whole)  # reads from the buffer: zero-copy slices
        except (pa.ArrowException, OSError) as exc:
            raise CacheError(f"cache file {data_path} is not a readable Arrow file "
                             f"({_first_line(exc)}); rebuild it") from exc
        meta = reader.schema.metadata or {}
        n_feat, n_targ = len(self.feature_names), len(self.target_names)
        if (reader.num_record_batches != n_dates
                or meta.get(META_KEY, b"").decode(errors="replace") != self.key
                or not reader.schema.equals(batch_schema(n_feat, n_targ))):
            raise CacheError(f"cache file {data_path} does not match its manifest; rebuild it")
        try:
            batches = [reader.get_batch(i) for i in range(n_dates)]
            for batch in batches:
                # Checks every buffer against the lengths the batch's metadata claims: a
                # damaged length must fail here, not abort the process in a later slice.
                batch.validate()
        except (pa.ArrowException, OSError) as exc:
            raise CacheError(f"cache file {data_path} is damaged ({_first_line(exc)}); "
                             "rebuild it") from exc
        if any(batch.num_rows != n_codes for batch in batches):
            raise CacheError(f"cache file {data_path} does not match its manifest; rebuild it")
        self._features_rw = self._strided(batches, whole.address, "features", np.float32,
                                          (n_dates, n_codes, n_feat))
        self._targets_rw = self._strided(batches, whole.address, "targets", np.float32,
                                         (n_dates, n_codes, n_targ))
        present = self._strided(batches, whole.address, "present", np.uint8,
                                (n_dates, n_codes))
        self.features = _read_only(self._features_rw)
        self.targets = _read_only(self._targets_rw)
        self.present = _read_only(present.view(np.bool_))  # uint8 0/1 as bool: no copy
        try:
            with np.load(self.path / INDEX_FILE, allow_pickle=False) as index:
                self.dates = index["dates"].astype("datetime64[D]")
                self.codes: list[str] = index["codes"].tolist()
            with np.load(self.path / STATS_FILE, allow_pickle=False) as stats:
                self.stats = {k: stats[k] for k in stats.files}
        except (OSError, ValueError, KeyError) as exc:
            raise CacheError(f"cache index or statistics of {self.path} are unreadable ({exc});"
                            " rebuild the cache") from exc
        if (len(self.dates) != n_dates or len(self.codes) != n_codes
                or any(self.stats.get(k, np.empty(0)).shape != (n_dates, n_feat)
                       for k in ("count", "mean", "m2"))):
            raise CacheError(f"cache index of {self.path} does not match its data; rebuild it")

    def _strided(self, batches: list[pa.RecordBatch], base: int, name: str, dtype: type,
                 shape: tuple[int, ...]) -> np.ndarray:
        """A (D, ...) numpy view of column ``name`` across every batch, inside the mapping.

        Each batch's buffer must lie exactly one stride after the previous one; anything else
        (a file this code did not write, or a damaged one) is refused rather than copied.
        """
        item = np.dtype(dtype).itemsize
        per_date = int(np.prod(shape[1:]))
        starts = []
        for i, batch in enumerate(batches):
            column = batch.column(name)
            values = column.flatten() if isinstance(column, pa.FixedSizeListArray) else column
            if column.null_count or values.null_count or len(values) != per_date:
                raise CacheError(f"cache column {name!r} of date {i} is not what this format "
                                "writes; the file is damaged, rebuild it")
            starts.append(values.buffers()[1].address - base + values.offset * item)
        starts_arr = np.asarray(starts, dtype=np.int64)
        stride = int(starts_arr[1] - starts_arr[0]) if len(starts_arr) > 1 else 0
        row_bytes = per_date * item
        if (starts_arr[0] < 0 or stride % item or (len(starts_arr) > 1 and stride < row_bytes)
                or np.any(np.diff(starts_arr) != stride)
                or starts_arr[-1] + row_bytes > len(self._mm)):
            raise CacheError(f"cache column {name!r} does not lie where expected in the file; "
                            "the file is damaged, rebuild it")
        flat = np.frombuffer(self._mm, dtype=dtype, offset=int(starts_arr[0]),
                             count=(len(self._mm) - int(starts_arr[0])) // item)
        inner = [item]
        for size in reversed(shape[2:]):
            inner.insert(0, inner[0] * size)
        return np.lib.stride_tricks.as_strided(flat, shape=shape,
                                               strides=(stride or row_bytes, *inner))

    # -- shape -------------------------------------------------------------------------
    @property
    def n_dates(self) -> int:
        return len(self.dates)

    @property
    def n_codes(self) -> int:
        return len(self.codes)

    @property
    def n_rows(self) -> int:
        """Source rows, i.e. present (date, code) cells."""
        return int(self.manifest["rows"])

    def __repr__(self) -> str:
        return (f"FeatureCache(key={self.key!r}, rows={self.n_rows}, "
                f"features={len(self.feature_names)}, dates={self.n_dates}, "
                f"codes={self.n_codes}, path={str(self.path)!r})")

    def date_position(self, date: str | np.datetime64) -> int:
        """Position of ``date`` in ``dates``; KeyError when the panel lacks it."""
        day = np.datetime64(date, "D")
        i = int(np.searchsorted(self.dates, day))
        if i == self.n_dates or self.dates[i] != day:
            raise KeyError(f"date {day} is not in the cache ({self.dates[0]} .. "
                           f"{self.dates[-1]})")
        return i

    # -- statistics --------------------------------------------------------------------
    def feature_moments(self, dates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(count, mean, std) per feature, pooled over the present finite values of the
        given date positions; exact (Chan et al.'s pairwise combination of per-date moments),
        with no pass over the panel. Float64, shape (F,) each; std is the population one."""
        dates = np.asarray(dates, dtype=np.int64)
        count = self.stats["count"][dates].astype(np.float64)  # (n, F)
        mean_d, m2_d = self.stats["mean"][dates], self.stats["m2"][dates]
        total = count.sum(axis=0)
        mean = (count * mean_d).sum(axis=0) / np.maximum(total, 1)
        m2 = m2_d.sum(axis=0) + (count * (mean_d - mean) ** 2).sum(axis=0)
        return total, mean, np.sqrt(m2 / np.maximum(total, 1))

    # -- torch -------------------------------------------------------------------------
    def features_torch(self, *, device: str | torch.device = "cpu", pin: bool = False,
                       non_blocking: bool = True) -> torch.Tensor:
        """All features as a (D, S, F) float32 tensor.

        On CPU without ``pin`` the tensor shares the mapped pages (no copy). ``pin=True``
        returns a page-locked CPU copy, for repeated fast host-to-device transfers. On CUDA
        the dates stream through pinned staging buffers with non-blocking copies; with
        ``non_blocking`` the call returns once the last copy is queued (work on the same
        stream is ordered after it; synchronize before using it from another stream).
        Training does not need either: it gathers each batch's windows from the map.
        """
        from cache._torch import to_torch

        return to_torch(self._features_rw, device=device, pin=pin, non_blocking=non_blocking)

    def targets_torch(self, *, device: str | torch.device = "cpu", pin: bool = False,
                      non_blocking: bool = True) -> torch.Tensor:
        """All targets as a (D, S, H) float32 tensor; see :meth:`features_torch`."""
        from cache._torch import to_torch

        return to_torch(self._targets_rw, device=device, pin=pin, non_blocking=non_blocking)

    # -- sidecars ----------------------------------------------------------------------
    def _sidecar_path(self, name: str, params: dict[str, Any]) -> tuple[Path, str]:
        if not isinstance(name, str) or not _SIDECAR_NAME.fullmatch(name):
            raise ValueError(f"sidecar name {name!r} must be 1-64 letters, digits, '_', '.' "
                             "or '-', starting with a letter or digit")
        try:
            params_json = json.dumps(params, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"sidecar params must be JSON-able with finite numbers: {exc}"
                             ) from exc
        h = new_hash()
        h.update(json.dumps([self.key, name, params_json]).encode())
        return self.path / SIDECAR_DIR / f"{name}-{h.hexdigest()[:24]}.npz", params_json

    def save_sidecar(self, name: str, arrays: dict[str, np.ndarray], *,
                     params: dict[str, Any]) -> None:
        """Store arrays derived from this cache with the parameters that made them.

        The file lives in this cache's directory (so it goes when the cache goes) and is
        named by a hash of (cache key, name, params); it is written atomically, so
        concurrent writers of the same sidecar leave one complete file.
        """
        path, params_json = self._sidecar_path(name, params)
        if SIDECAR_META in arrays:
            raise ValueError(f"array name {SIDECAR_META!r} is reserved")
        for key, value in arrays.items():
            if np.asarray(value).dtype.hasobject:
                raise ValueError(f"sidecar array {key!r} has dtype object; store numbers")
        meta = json.dumps({"key": self.key, "name": name, "params": json.loads(params_json)})
        # Straight into the temp file (np.savez stores members uncompressed), never a second
        # in-memory copy: a seed-sized graph is gigabytes.
        atomic_write(path, lambda f: np.savez(
            f, **{k: np.asarray(v) for k, v in arrays.items()},
            **{SIDECAR_META: np.frombuffer(meta.encode(), dtype=np.uint8)}))

    def load_sidecar(self, name: str, *, params: dict[str, Any], mmap: bool = False
                     ) -> dict[str, np.ndarray] | None:
        """The arrays saved under ``name`` with exactly these params, or None.

        ``mmap=True`` maps each array read-only from the file instead of reading it: the
        arrays then live in the page cache, shared by every process of the host, not in this
        process's memory.
        """
        path, params_json = self._sidecar_path(name, params)
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(stored[SIDECAR_META].tobytes().decode())
            if (meta.get("key") != self.key or meta.get("name") != name
                    or meta.get("params") != json.loads(params_json)):
                return None  # a hash-prefix collision: treat as absent
            if not mmap:
                return {k: stored[k] for k in stored.files if k != SIDECAR_META}
        return {k: v for k, v in _mapped_npz(path).items() if k != SIDECAR_META}


def _mapped_npz(path: Path) -> dict[str, np.ndarray]:
    """Every member of an uncompressed ``.npz`` as a read-only memory map of the file.

    A stored zip member's bytes lie verbatim after its local header, and an ``.npy`` member
    is a header followed by the raw array, so each array is one ``np.memmap`` at the offset
    where its data starts.
    """
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for info in zf.infolist():
            key = info.filename.removesuffix(".npy")
            if info.compress_type != zipfile.ZIP_STORED:
                out[key] = np.load(io.BytesIO(zf.read(info)), allow_pickle=False)
                continue
            f.seek(info.header_offset)
            local = f.read(30)  # the fixed part of a zip local file header
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            if dtype.hasobject:
                raise CacheError(f"sidecar {path} holds objects; rebuild it")
            if int(np.prod(shape)) == 0:
                out[key] = np.zeros(shape, dtype=dtype)
                continue
            out[key] = np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape,
                                 order="F" if fortran else "C")
    return out


def cache_dirs(cache_root: Path) -> list[Path]:
    """The finished cache directories under ``cache_root`` (not temp or lock dirs)."""
    return sorted(p.parent for p in Path(cache_root).glob(f"*/{MANIFEST_FILE}")
                  if not p.parent.name.startswith("."))


def open_cache(path: str | Path) -> FeatureCache:
    """Open a built cache directory (``<cache_root>/<key>``) without building anything."""
    return FeatureCache(Path(path))
