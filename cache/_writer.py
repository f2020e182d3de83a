"""Write the files of one cache directory (see cache.feature_cache for the layout)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cache._dense import STATS_FILE, Built, Keys, write_dense
from cache.errors import writing
from cache.feature_cache import (
    DATA_FILE,
    FORMAT_VERSION,
    INDEX_FILE,
    MANIFEST_FILE,
    META_KEY,
    META_VERSION,
    batch_schema,
)
from cache.spec import CacheSpec


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make renames and creations inside ``path`` durable."""
    _fsync(path)


def _fsync_file(path: Path) -> int:
    """Flush a file written by another writer (Arrow's) to disk; returns its size."""
    _fsync(path)
    return path.stat().st_size


def _write_synced(path: Path, write: Callable[[Any], None]) -> int:
    with writing(path), open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return path.stat().st_size


def write_cache_files(directory: Path, *, keys: Keys,
                      chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
                      features: list[str], targets: list[str], spec: CacheSpec,
                      manifest: dict[str, Any], where: str, started: float,
                      after_data: Callable[[], None] | None = None) -> dict[str, Any]:
    """Write data, statistics, index and manifest into the (temporary) ``directory``, each
    fsynced; the manifest goes last, so a directory without one is never a cache.

    ``started`` is the ``time.time()`` the build began (for ``build_seconds``).
    ``after_data`` runs between the data file and the manifest: the test hook that holds a
    build mid-way so it can be killed there. Returns the manifest as written.
    """
    metadata = {META_KEY: manifest["key"].encode(), META_VERSION: str(FORMAT_VERSION).encode()}
    with writing(directory / DATA_FILE):  # the statistics file names its own path
        built: Built = write_dense(directory / DATA_FILE, directory / STATS_FILE, keys=keys,
                                   chunks=chunks, features=features, targets=targets,
                                   spec=spec, metadata=metadata, where=where)
        data_bytes = _fsync_file(directory / DATA_FILE)
    if after_data is not None:
        after_data()
    index_bytes = _write_synced(
        directory / INDEX_FILE,
        lambda f: np.savez(f, dates=keys.dates, codes=np.array(keys.codes, dtype=str)),
    )
    schema = batch_schema(len(features), len(targets))
    manifest = {
        **manifest,
        "layout": "dense-per-date",
        "rows": built.rows,
        "n_features": len(features),
        "n_targets": len(targets),
        "n_dates": built.n_dates,
        "n_codes": built.n_codes,
        "first_date": str(keys.dates[0]),
        "last_date": str(keys.dates[-1]),
        "feature_names": list(features),
        "target_names": list(targets),
        "nan": {"bad_values": built.bad_values,
                "missing_feature_values": built.missing_feature_values,
                "rows_with_missing_feature": built.rows_with_missing_feature},
        "rows_with_target": dict(zip(targets, built.rows_with_target, strict=True)),
        "schema": {field.name: str(field.type) for field in schema},
        "files": {DATA_FILE: data_bytes, INDEX_FILE: index_bytes,
                  STATS_FILE: (directory / STATS_FILE).stat().st_size},
        "build_passes": built.passes,
        "build_seconds": round(time.time() - started, 3),
    }
    text = json.dumps(manifest, indent=2) + "\n"
    _write_synced(directory / MANIFEST_FILE, lambda f: f.write(text.encode()))
    fsync_dir(directory)
    return manifest
