"""The scale benchmark's memory promises at a CI size: the cache build streams (its memory does
not grow with the panel) and training keeps the panel in the page cache, not in its own memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.bench_scale import _in_child, generate

STOCKS, FEATURES = 1000, 100
SMALL, LARGE = 100, 400  # dates


@pytest.fixture(scope="module")
def panels(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("scale")
    out = {}
    for dates in (SMALL, LARGE):
        out[dates] = root / f"panel_{dates}.parquet"
        generate(out[dates], stocks=STOCKS, dates=dates, features=FEATURES, seed=0)
    return out


def test_cache_build_memory_does_not_grow_with_the_panel(panels: dict[int, Path],
                                                         tmp_path: Path) -> None:
    small = _in_child("build", str(panels[SMALL]), str(tmp_path / "small"))
    large = _in_child("build", str(panels[LARGE]), str(tmp_path / "large"))
    assert large["feature_gb"] > 3.5 * small["feature_gb"]
    grown = large["peak_anon_gb"] - small["peak_anon_gb"]
    added = large["feature_gb"] - small["feature_gb"]
    # A build that held the panel (or a copy per step, as before) would add >= 1x per byte.
    assert grown < 0.25 * added, (small, large)


def test_training_reads_the_panel_from_the_page_cache(panels: dict[int, Path],
                                                      tmp_path: Path) -> None:
    root = tmp_path / "cache"
    build = _in_child("build", str(panels[LARGE]), str(root))
    trained = _in_child("train", str(panels[LARGE]), str(root), str(tmp_path / "trial"), 1, 8,
                        10)
    # The model, its activations and the per-batch windows, but never the panel itself.
    assert trained["peak_anon_gb"] < 0.5 * build["feature_gb"], trained
    assert trained["rows_kept_fraction"] == 1.0
    assert 0.015 < trained["values_missing_fraction"] < 0.025  # the generator's 2 %
    assert trained["edges_per_date"] > 0
    assert trained["val_dates"] > 50  # the whole validation period was scored
