"""Write a prepared panel as the files of one cache directory (see cache.feature_cache)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from cache._panel import Panel
from cache.feature_cache import (
    DATA_FILE,
    FORMAT_VERSION,
    INDEX_FILE,
    MANIFEST_FILE,
    META_KEY,
    META_VERSION,
)


def fsync_dir(path: Path) -> None:
    """Make renames and creations inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, write: Callable[[Any], None]) -> int:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return path.stat().st_size


def _matrix_column(matrix: np.ndarray) -> pa.FixedSizeListArray:  # float32 only
    """(rows, width) C-contiguous -> fixed-size-list column whose child is the same bytes."""
    rows, width = matrix.shape
    flat = pa.array(matrix.reshape(rows * width), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, width)


def record_batch(panel: Panel, *, key: str) -> pa.RecordBatch:
    columns = {
        "features": _matrix_column(panel.features),
        "targets": _matrix_column(panel.targets),
        "date_index": pa.array(panel.date_index, type=pa.int32()),
        "code_index": pa.array(panel.code_index, type=pa.int32()),
    }
    if panel.valid is not None and panel.target_valid is not None:
        # uint8, not Arrow bool: Arrow packs bools into bits, which numpy cannot view.
        columns["valid"] = pa.array(panel.valid.view(np.uint8), type=pa.uint8())
        tv = np.ascontiguousarray(panel.target_valid).view(np.uint8)  # (rows, n_targets)
        columns["target_valid"] = pa.FixedSizeListArray.from_arrays(
            pa.array(tv.reshape(-1), type=pa.uint8()), tv.shape[1])
        if panel.feature_valid is not None:
            columns["feature_valid"] = pa.array(panel.feature_valid.view(np.uint8),
                                                type=pa.uint8())
    schema = pa.schema(
        [pa.field(name, array.type, nullable=False) for name, array in columns.items()],
        metadata={META_KEY: key.encode(), META_VERSION: str(FORMAT_VERSION).encode()},
    )
    return pa.record_batch(list(columns.values()), schema=schema)


def write_cache_files(directory: Path, panel: Panel, manifest: dict[str, Any], *,
                      started: float, after_data: Callable[[], None] | None = None,
                      ) -> dict[str, Any]:
    """Write data, index and manifest into the (temporary) ``directory``, each fsynced.

    ``started`` is the ``time.time()`` the build began (for ``build_seconds``).
    ``after_data`` runs between the data file and the manifest: the test hook that holds a
    build mid-way so it can be killed there. Returns the manifest as written.
    """
    batch = record_batch(panel, key=manifest["key"])

    def write_data(f: Any) -> None:
        # Uncompressed (the default): compression would force a decoding copy on read.
        with pa.ipc.new_file(f, batch.schema) as writer:
            writer.write_batch(batch)

    data_bytes = _write_synced(directory / DATA_FILE, write_data)
    if after_data is not None:
        after_data()
    index_bytes = _write_synced(
        directory / INDEX_FILE,
        lambda f: np.savez(f, unique_dates=panel.unique_dates,
                           codes=np.array(panel.codes, dtype=str),
                           date_offsets=panel.date_offsets),
    )
    manifest = {
        **manifest,
        "rows": int(panel.features.shape[0]),
        "n_features": len(panel.feature_names),
        "n_targets": len(panel.target_names),
        "n_dates": len(panel.unique_dates),
        "n_codes": len(panel.codes),
        "first_date": str(panel.unique_dates[0]),
        "last_date": str(panel.unique_dates[-1]),
        "feature_names": list(panel.feature_names),
        "target_names": list(panel.target_names),
        "nan": {"bad_values": panel.bad_values, "invalid_rows": panel.invalid_rows},
        "schema": {field.name: str(field.type) for field in batch.schema},
        "files": {DATA_FILE: data_bytes, INDEX_FILE: index_bytes},
        "build_seconds": round(time.time() - started, 3),
    }
    text = json.dumps(manifest, indent=2) + "\n"
    _write_synced(directory / MANIFEST_FILE, lambda f: f.write(text.encode()))
    fsync_dir(directory)
    return manifest
