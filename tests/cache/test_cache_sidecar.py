"""Sidecars: arrays derived from a cache (correlation graphs), keyed by cache key + params."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cache import load_or_build, open_cache
from cache.testing import make_panel, panel_spec


def test_round_trip_keyed_by_params(tmp_path: Path) -> None:
    fc = load_or_build(make_panel(), tmp_path, panel_spec())
    edges = np.array([[0, 1], [1, 2]], dtype=np.int64)
    weights = np.array([0.5, 0.25], dtype=np.float32)
    params = {"window": 20, "threshold": 0.3, "method": "pearson"}
    assert fc.load_sidecar("corr_graph", params=params) is None
    fc.save_sidecar("corr_graph", {"edges": edges, "weights": weights}, params=params)

    again = open_cache(fc.path).load_sidecar("corr_graph", params=dict(reversed(params.items())))
    assert again is not None and set(again) == {"edges", "weights"}
    np.testing.assert_array_equal(again["edges"], edges)
    assert again["weights"].dtype == np.float32
    assert fc.load_sidecar("corr_graph", params={**params, "window": 60}) is None
    assert fc.load_sidecar("other", params=params) is None
    # written atomically: one file, no temp files beside it
    assert [p.suffix for p in (fc.path / "sidecars").iterdir()] == [".npz"]


def test_sidecar_belongs_to_its_cache_key(tmp_path: Path) -> None:
    a = load_or_build(make_panel(seed=1), tmp_path, panel_spec())
    b = load_or_build(make_panel(seed=2), tmp_path, panel_spec())
    a.save_sidecar("corr_graph", {"w": np.ones(3)}, params={"k": 1})
    assert b.load_sidecar("corr_graph", params={"k": 1}) is None
    a.save_sidecar("corr_graph", {"w": np.zeros(3)}, params={"k": 1})  # overwrite
    np.testing.assert_array_equal(a.load_sidecar("corr_graph", params={"k": 1})["w"],
                                  np.zeros(3))


@pytest.mark.parametrize("name,arrays,params,match", [
    ("../escape", {"x": np.ones(1)}, {}, "sidecar name"),
    ("g", {"x": np.array([object()], dtype=object)}, {}, "dtype object"),
    ("g", {"x": np.ones(1)}, {"f": float("nan")}, "JSON-able"),
    ("g", {"__sidecar__": np.ones(1)}, {}, "reserved"),
])
def test_bad_sidecar_arguments(tmp_path: Path, name: str, arrays: dict[str, np.ndarray],
                               params: dict[str, float], match: str) -> None:
    fc = load_or_build(make_panel(), tmp_path, panel_spec())
    with pytest.raises(ValueError, match=match):
        fc.save_sidecar(name, arrays, params=params)


def test_sidecar_maps_its_arrays_from_the_file(tmp_path: Path) -> None:
    """mmap=True: the same values, but views of the file (page cache), not process memory."""
    fc = load_or_build(make_panel(), tmp_path, panel_spec())
    arrays = {"src": np.arange(1000, dtype=np.int32), "w": np.linspace(0, 1, 7, dtype=np.float32),
              "grid": np.arange(12, dtype=np.float64).reshape(3, 4),
              "empty": np.zeros(0, dtype=np.int64)}
    fc.save_sidecar("graphs", arrays, params={"k": 3})
    mapped = fc.load_sidecar("graphs", params={"k": 3}, mmap=True)
    assert mapped is not None and set(mapped) == set(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(mapped[key], value)
        assert mapped[key].dtype == value.dtype and mapped[key].shape == value.shape
    assert isinstance(mapped["src"], np.memmap) and not mapped["src"].flags.writeable
    assert fc.load_sidecar("graphs", params={"k": 4}, mmap=True) is None
