"""A damaged cache directory is refused with one CacheError line; it never crashes the reader
or hands out wrong arrays."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from cache import build_cache, open_cache
from cache.errors import CacheError
from cache.feature_cache import DATA_FILE, MANIFEST_FILE
from cache.testing import make_panel, panel_spec

ARROW_MAGIC = 8  # "ARROW1" and two bytes of padding open an Arrow IPC file


@pytest.fixture
def built(tmp_path: Path) -> Path:
    return build_cache(make_panel(n_stocks=5, n_dates=3), tmp_path, panel_spec())


def _refused(path: Path, match: str) -> str:
    with pytest.raises(CacheError, match=match) as err:
        open_cache(path)
    assert "\n" not in str(err.value)
    return str(err.value)


def _edit_manifest(path: Path, **changes: object) -> None:
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            manifest[key].update(value)
        else:
            manifest[key] = value
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))


def _first_batch_metadata(data: bytes) -> range:
    """Byte range of the first record batch's message header (the flatbuffer that gives the
    batch's length and every buffer's offset and size)."""
    def message_at(pos: int) -> tuple[int, int]:
        continuation, length = struct.unpack_from("<Ii", data, pos)
        assert continuation == 0xFFFFFFFF
        return pos + 8, length

    start, length = message_at(ARROW_MAGIC)  # the schema message (no body)
    start, length = message_at(start + length)
    return range(start, start + length)


def test_a_truncated_data_file_is_refused(built: Path) -> None:
    data = (built / DATA_FILE).read_bytes()
    (built / DATA_FILE).write_bytes(data[:len(data) // 2])
    message = _refused(built, "the cache is damaged, rebuild it")
    assert f"has {len(data) // 2} bytes, its manifest says {len(data)}" in message
    # The same cut with a manifest that agrees on the size: the Arrow footer is gone.
    _edit_manifest(built, files={DATA_FILE: len(data) // 2})
    _refused(built, "is not a readable Arrow file .*; rebuild it")


def test_a_manifest_with_the_wrong_shape_is_refused(built: Path) -> None:
    _edit_manifest(built, n_dates=4)
    _refused(built, "does not match its manifest; rebuild it")
    _edit_manifest(built, n_dates=3, n_codes=6)
    _refused(built, "does not match its manifest; rebuild it")
    _edit_manifest(built, n_codes=5, feature_names=["f0", "f1"])
    _refused(built, "does not match its manifest; rebuild it")
    _edit_manifest(built, feature_names=["f0", "f1", "f2"], n_dates="three")
    _refused(built, r"manifest .* is damaged \(bad n_dates, n_codes or files: ValueError")
    _edit_manifest(built, n_dates=3, files={DATA_FILE: None})
    _refused(built, r"manifest .* is damaged \(bad n_dates, n_codes or files: TypeError")
    _edit_manifest(built, files={DATA_FILE: (built / DATA_FILE).stat().st_size})
    assert open_cache(built).features.shape == (3, 5, 3)  # the edits undone: readable again


def test_every_changed_byte_of_a_batch_header_is_refused_or_harmless(built: Path) -> None:
    good = open_cache(built)
    features, targets, present = good.features.copy(), good.targets.copy(), good.present.copy()
    data = (built / DATA_FILE).read_bytes()
    header = _first_batch_metadata(data)
    assert header.stop <= good.features.ctypes.data - np.frombuffer(good._mm, np.uint8).ctypes.data
    del good
    refused = 0
    for pos in header:
        damaged = bytearray(data)
        damaged[pos] ^= 0xFF
        (built / DATA_FILE).write_bytes(bytes(damaged))
        try:
            fc = open_cache(built)
        except CacheError as exc:
            assert "\n" not in str(exc) and "rebuild it" in str(exc), (pos, str(exc))
            refused += 1
            continue
        # Bytes the reader does not depend on (padding, unused flatbuffer fields).
        np.testing.assert_array_equal(fc.features, features, err_msg=f"byte {pos}")
        np.testing.assert_array_equal(fc.targets, targets, err_msg=f"byte {pos}")
        np.testing.assert_array_equal(fc.present, present, err_msg=f"byte {pos}")
    assert refused > len(header) // 4


def test_a_missing_or_mismatched_index_is_refused(built: Path) -> None:
    np.savez(built / "index.npz", dates=np.array(["2024-01-01"], dtype="datetime64[D]"),
             codes=np.array(["0001"]))
    _refused(built, "cache index of .* does not match its data; rebuild it")
    (built / "stats.npz").unlink()
    _refused(built, "index or statistics of .* are unreadable .*; rebuild the cache")


def test_load_or_build_rebuilds_a_damaged_cache_from_its_source(tmp_path: Path,
                                                                caplog) -> None:
    """A cache is derived data: truncated on disk, it is rebuilt once, with a line saying so,
    and the rebuilt one holds the source's values."""
    from cache import load_or_build

    panel = make_panel(n_stocks=5, n_dates=3)
    first = load_or_build(panel, tmp_path, panel_spec())
    expected = first.features.copy()
    data = (first.path / DATA_FILE).read_bytes()
    del first
    (tmp_path / first_key(tmp_path) / DATA_FILE).write_bytes(data[:len(data) // 2])
    caplog.set_level("WARNING")
    again = load_or_build(panel, tmp_path, panel_spec())
    assert "is damaged" in caplog.text and "rebuilding it from its source" in caplog.text
    assert (again.path / DATA_FILE).stat().st_size == len(data)
    np.testing.assert_array_equal(again.features, expected)


def first_key(root: Path) -> str:
    return next(p.name for p in root.iterdir() if (p / MANIFEST_FILE).is_file())
