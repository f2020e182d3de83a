"""load_or_build: the one way trainers get features.

Key = BLAKE2b(cache format version, source content hash, spec). A cache lives in
``<cache_root>/<key>/``; the same key is reused, anything else builds a new directory (an
older cache of the same source stays until removed; ``python -m cache.info ROOT`` lists
them). Reuse opens the memory map and parses no parquet/CSV; a file source is only stat'ed
(its content hash is remembered against its stat signature, see ``cache._source``).

Safety: a build writes into ``<cache_root>/.tmp-<key>-*/``, fsyncs every file and the
directory, then renames it to ``<key>`` in one step, so a crash leaves the earlier caches
and no ``<key>`` directory, never a torn one (the next build of that key deletes the left
temp directory). Builders of one key serialise on ``<cache_root>/.locks/<key>.lock``; the
ones that waited find the finished cache and reuse it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
from filelock import FileLock, Timeout

from cache._dense import columns_of, iter_chunks, read_keys, value_matrices
from cache._panel import resolve_columns
from cache._source import (
    Source,
    check_unchanged,
    file_content_hash,
    file_schema,
    frame_content_hash,
    generate_synthetic,
    new_hash,
    read_file,
    resolve_source,
)
from cache._writer import fsync_dir, write_cache_files
from cache.errors import CacheError, check_free_space
from cache.feature_cache import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_FILE,
    FeatureCache,
    cache_dirs,
    open_cache,
)
from cache.spec import CODE_COLUMN, DATE_COLUMN, DEFAULT_TARGETS, CacheSpec

log = logging.getLogger("cache")

LOCK_DIR = ".locks"
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
KEY_HEX = 24  # 96 bits: no accidental collision among any realistic number of caches
# Test-only hooks, read from the environment so a test can steer a builder in a subprocess:
# PAUSE_FILE: after writing the data file, create this file and sleep (to be SIGKILLed);
# BUILD_DELAY: sleep this many seconds at the same point (to make builders overlap).
ENV_PAUSE_FILE = "HPO_CACHE_TEST_PAUSE_FILE"
ENV_BUILD_DELAY = "HPO_CACHE_TEST_BUILD_DELAY"
PAUSE_SECONDS = 120.0


def cache_key(content_hash: str, spec: CacheSpec) -> str:
    """The cache key of a source with this content hash under this spec."""
    payload = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
               "source": content_hash, "spec": spec.to_dict()}
    h = new_hash()
    h.update(json.dumps(payload, sort_keys=True).encode())
    return h.hexdigest()[:KEY_HEX]


def _where(source: Source) -> str:
    return f"panel {source.id}" if source.kind in ("dataframe", "synthetic") else (
        f"{source.kind} {source.path}")


def _frame_columns(frame: pl.DataFrame, spec: CacheSpec, where: str) -> list[str]:
    features, targets = resolve_columns(dict(frame.schema), spec, where=where, typed=True)
    return [DATE_COLUMN, CODE_COLUMN, *features, *targets]


def _fingerprint(source: Source, spec: CacheSpec, *, cache_root: Path, rehash: bool) -> str:
    """The source's content hash; in-memory sources are checked for columns first."""
    if source.kind in ("parquet", "csv"):
        return file_content_hash(source, cache_root=cache_root, rehash=rehash)
    if source.kind == "synthetic":
        source.frame = source.canonical(generate_synthetic(source.options), whole=True)
    assert source.frame is not None
    return frame_content_hash(source.frame, _frame_columns(source.frame, spec, _where(source)))


def _read_frame(source: Source, spec: CacheSpec) -> pl.DataFrame:
    """Parse a file source, reading only the columns the spec needs where it can."""
    where = _where(source)
    schema = file_schema(source)
    if source.kind == "parquet":
        features, targets = resolve_columns(schema, spec, where=where, typed=True)
        return read_file(source, [DATE_COLUMN, CODE_COLUMN, *features, *targets],
                         string_columns=())
    # CSV: the header gives names only; default features need the types of the data.
    resolve_columns(schema, spec, where=where, typed=False)
    columns = ([DATE_COLUMN, CODE_COLUMN, *spec.target_columns, *spec.feature_columns]
               if spec.feature_columns else None)
    frame = read_file(source, columns, string_columns=(DATE_COLUMN, CODE_COLUMN))
    if frame.height == 0:
        raise CacheError(f"{where} has a header but no rows")
    return frame


def _why_new(cache_root: Path, source: Source, content_hash: str, spec: CacheSpec) -> str:
    """Why no cache could be reused, compared with the newest cache of the same source."""
    previous: list[dict[str, Any]] = []
    for cache_dir in cache_dirs(cache_root):
        try:
            manifest = json.loads((cache_dir / MANIFEST_FILE).read_text())
            if manifest["source"]["id"] == source.id:
                previous.append(manifest)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not previous:
        return f"no cache of {source.id} yet"
    last = max(previous, key=lambda m: str(m.get("created_at", "")))
    changes = []
    if last.get("format_version") != FORMAT_VERSION:
        changes.append(f"cache format changed (version {last.get('format_version')} -> "
                       f"{FORMAT_VERSION})")
    old_hash = str(last.get("source", {}).get("content_hash", ""))
    if old_hash != content_hash:
        changes.append(f"source content changed ({old_hash[:12]} -> {content_hash[:12]})")
    old_spec, new_spec = last.get("spec") or {}, spec.to_dict()
    diffs = [f"{k} {old_spec.get(k)!r} -> {new_spec.get(k)!r}"
             for k in sorted(set(old_spec) | set(new_spec)) if old_spec.get(k) != new_spec.get(k)]
    if diffs:
        changes.append("feature config changed (" + "; ".join(diffs) + ")")
    return "; ".join(changes) or f"the cache of {source.id} with this key is gone"


@contextmanager
def _build_lock(cache_root: Path, key: str, timeout: float | None) -> Iterator[None]:
    lock_dir = cache_root / LOCK_DIR
    lock_dir.mkdir(parents=True, exist_ok=True)
    # flock-based: the kernel drops it when a holder dies, so kill -9 leaves no stale lock.
    # The lock file is kept on release: unlinking it could let a waiter holding the old
    # inode and a newcomer creating a new one both "hold" the lock.
    lock = FileLock(lock_dir / f"{key}.lock", preserve_lock_file=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process building cache %s", key)
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except Timeout:
            raise CacheError(f"gave up after {timeout} s waiting for the build lock "
                             f"{lock.lock_file} of cache {key}") from None
    try:
        yield
    finally:
        lock.release()


def _test_hook_mid_build() -> None:
    delay = os.environ.get(ENV_BUILD_DELAY)
    if delay:
        time.sleep(float(delay))
    pause_file = os.environ.get(ENV_PAUSE_FILE)
    if pause_file:
        Path(pause_file).write_text(str(os.getpid()))
        time.sleep(PAUSE_SECONDS)


def _build_locked(source: Source, spec: CacheSpec, *, content_hash: str, key: str,
                  cache_root: Path) -> None:
    """Build ``<cache_root>/<key>`` (replacing one that exists); the caller holds the lock."""
    final = cache_root / key
    # Holding the key's lock means no live builder owns these: they are crash leftovers.
    for stale in [*cache_root.glob(f"{TMP_PREFIX}{key}-*"),
                  *cache_root.glob(f"{OLD_PREFIX}{key}-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{key}-", dir=cache_root))
    try:
        where = _where(source)
        # Parquet streams from the file; CSV is parsed whole (its types come from every row),
        # then sliced like an in-memory frame.
        frame = source.frame if source.frame is not None else (
            _read_frame(source, spec) if source.kind == "csv" else None)
        schema = dict(frame.schema) if frame is not None else file_schema(source)
        features, targets = columns_of(source, frame, spec, where=where, schema=schema)
        keys = read_keys(iter_chunks(source, frame, [DATE_COLUMN, CODE_COLUMN]), where)
        # The dense (dates, stocks, columns) float32 arrays and the presence mask, before
        # anything is written: a full disk is one line naming the bytes, not a torn build.
        cells = len(keys.dates) * len(keys.codes)
        check_free_space(str(tmp), cells * (4 * (len(features) + len(targets)) + 1))
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "key": key,
            "created_at": datetime.now(UTC).isoformat(timespec="microseconds"),
            "source": {**source.describe(), "content_hash": content_hash},
            "spec": spec.to_dict(),
            "build": {"pid": os.getpid(), "polars": pl.__version__, "pyarrow": pa.__version__},
        }
        write_cache_files(tmp, keys=keys,
                          chunks=lambda: iter_chunks(source, frame, [*features, *targets],
                                                     value_matrices(features, targets)),
                          features=features, targets=targets, spec=spec, manifest=manifest,
                          where=where, started=started, after_data=_test_hook_mid_build)
        check_unchanged(source)
        old = None
        if final.exists():  # only on a forced rebuild
            old = cache_root / f"{OLD_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
        os.rename(tmp, final)
        fsync_dir(cache_root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)  # open maps of it stay valid
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _ensure(source: str | Path | pl.DataFrame, cache_root: str | Path, spec: CacheSpec, *,
            source_id: str | None, force: bool, rehash: bool,
            lock_timeout: float | None) -> Path:
    if not isinstance(spec, CacheSpec):
        raise TypeError(f"spec must be a CacheSpec, got {type(spec).__name__}")
    cache_root = Path(cache_root)
    resolved = resolve_source(source, source_id=source_id, renames=spec.renames())
    if spec.target_columns is None:
        if resolved.kind in ("parquet", "csv"):
            raise CacheError(f"{_where(resolved)}: name its target columns (the forward returns "
                             "to predict), e.g. CacheSpec(target_columns=('ret_1d',)) or "
                             "python -m cache.build --targets ret_1d; a file has no default "
                             "targets")
        spec = dataclasses.replace(spec, target_columns=DEFAULT_TARGETS)
    content_hash = _fingerprint(resolved, spec, cache_root=cache_root, rehash=rehash)
    key = cache_key(content_hash, spec)
    path = cache_root / key
    if not force and (path / MANIFEST_FILE).is_file():
        log.info("reusing cache %s (%s)", key, path)
        return path
    cache_root.mkdir(parents=True, exist_ok=True)
    with _build_lock(cache_root, key, lock_timeout):
        if not force and (path / MANIFEST_FILE).is_file():
            log.info("reusing cache %s (%s), built by another process meanwhile", key, path)
            return path
        reason = "forced rebuild" if force else _why_new(cache_root, resolved, content_hash,
                                                         spec)
        log.info("building cache %s: %s", key, reason)
        _build_locked(resolved, spec, content_hash=content_hash, key=key,
                      cache_root=cache_root)
    log.info("built cache %s (%s)", key, path)
    return path


def load_or_build(source: str | Path | pl.DataFrame, cache_root: str | Path,
                  spec: CacheSpec | None = None, *, source_id: str | None = None,
                  rehash: bool = False, lock_timeout: float | None = None) -> FeatureCache:
    """The memory-mapped cache of ``source`` under ``spec``, built first if needed.

    Args:
        source: a parquet or CSV path, a polars DataFrame, or ``"synthetic:n_stocks=...,
            n_dates=...,seed=..."`` (calls ``GENERATORS["synthetic"]``, by default the
            ATFT-GAT synthetic market).
        cache_root: directory holding caches (one sub-directory per key).
        spec: columns and NaN policy; None means ``CacheSpec()``.
        source_id: the name the logs and manifest use for the source, and under which a
            rebuild looks up the previous cache to say what changed. Defaults to the
            resolved path, ``"dataframe"``, or the normalised synthetic string.
        rehash: hash a file source's bytes even if its stat signature is unchanged.
        lock_timeout: seconds to wait for another process's build; None waits for ever.

    A missing source file is a CacheError (its key cannot be checked); to use a cache
    without its source, ``open_cache(<cache_root>/<key>)``. In-memory and synthetic
    sources are hashed on every call (~1 GB/s), as their content is all there is. A cache
    that is there but damaged (a truncated or altered file: ``open_cache`` refuses it) is
    derived data: it is rebuilt from the source once, with a log line saying why, never
    reused.
    """
    spec = spec or CacheSpec()
    path = _ensure(source, cache_root, spec, source_id=source_id, force=False,
                   rehash=rehash, lock_timeout=lock_timeout)
    try:
        return open_cache(path)
    except CacheError as exc:
        log.warning("cache %s is damaged (%s); rebuilding it from its source", path.name, exc)
    path = _ensure(source, cache_root, spec, source_id=source_id, force=True, rehash=rehash,
                   lock_timeout=lock_timeout)
    return open_cache(path)


def build_cache(source: str | Path | pl.DataFrame, cache_root: str | Path,
                spec: CacheSpec | None = None, *, source_id: str | None = None,
                force: bool = False, rehash: bool = False,
                lock_timeout: float | None = None) -> Path:
    """Build (or, unless ``force``, reuse) the cache of ``source``; returns its directory.

    ``force`` rebuilds an existing key: the new directory replaces the old by two renames,
    so a crash in between leaves no cache of that key (never a torn one) and the next call
    builds it again; processes that have the old one open keep reading it.
    """
    return _ensure(source, cache_root, spec or CacheSpec(), source_id=source_id, force=force,
                   rehash=rehash, lock_timeout=lock_timeout)


def source_columns(source: str | Path | pl.DataFrame, spec: CacheSpec | None = None
                   ) -> list[str]:
    """The column names of a file or frame source, reading no data (a parquet footer or a CSV
    header); ``[]`` for the synthetic market, whose columns are generated. With ``spec``, its
    key columns are named ``date`` and ``code`` (a CacheError if absent)."""
    src = resolve_source(source, source_id=None, renames=spec.renames() if spec else None)
    if src.kind == "synthetic":
        return []
    if src.frame is not None:
        return list(src.frame.columns)
    if not src.path or not src.path.exists():
        raise CacheError(f"{src.kind} {source} does not exist; check the path (a relative "
                         "path is read from the directory the command runs in)")
    return list(file_schema(src))


def check_source(source: str | Path | pl.DataFrame, spec: CacheSpec) -> dict[str, Any]:
    """Every check of the data contract that a build makes, writing nothing: the columns and
    their types, parseable dates and codes, no duplicate (date, code) row. A mistake is a
    ``CacheError``, exactly as the build would raise it. Reads the key columns (a CSV whole).

    Returns ``{"features", "targets", "dates", "codes", "first_date", "last_date",
    "calendar"}``: the columns, the panel's size, its first and last date (ISO) and every
    date (ascending ``datetime64[D]``).
    """
    src = resolve_source(source, source_id=None, renames=spec.renames())
    if src.kind == "synthetic":
        src.frame = src.canonical(generate_synthetic(src.options), whole=True)
    where = _where(src)
    if src.path is not None and not src.path.exists():
        raise CacheError(f"{where} does not exist; check the path")
    frame = src.frame if src.frame is not None else (
        _read_frame(src, spec) if src.kind == "csv" else None)
    schema = dict(frame.schema) if frame is not None else file_schema(src)
    features, targets = columns_of(src, frame, spec, where=where, schema=schema)
    keys = read_keys(iter_chunks(src, frame, [DATE_COLUMN, CODE_COLUMN]), where)
    return {"features": features, "targets": targets, "dates": len(keys.dates),
            "codes": len(keys.codes), "first_date": str(keys.dates[0]),
            "last_date": str(keys.dates[-1]), "calendar": keys.dates}
