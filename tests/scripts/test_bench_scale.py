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
    # What does grow at this size is allocator retention: the decoding, scattering and writing
    # threads' freed buffers stay in Arrow's and glibc's pools, 0.18-0.29x per added byte here
    # between runs (0.15x with one thread). It does not keep growing: at the seed's size the
    # whole build peaks at 0.097x of the features (scripts/bench_scale.py, target 0.25x).
    assert grown < 0.5 * added, (small, large)


def test_training_memory_does_not_grow_with_the_panel(panels: dict[int, Path],
                                                     tmp_path: Path) -> None:
    """Same model, steps and validation dates on 100 and 400 dates of panel: what training
    holds beyond the page cache (the model, its activations, one batch's windows) is the same,
    so the panel is never copied into the process. (Without the graph block: the graph's edges
    do grow with dates x stocks, by design; the graph has its own benchmark.)"""
    runs = {}
    for dates in (SMALL, LARGE):
        root = tmp_path / f"cache{dates}"
        build = _in_child("build", str(panels[dates]), str(root))
        # val_fraction gives both runs ~5 validation dates to score.
        runs[dates] = {**_in_child("train", str(panels[dates]), str(root),
                                   str(tmp_path / f"trial{dates}"), 1, 8, 10,
                                   5 / (dates - 1), False),
                        "feature_gb": build["feature_gb"]}
    small, large = runs[SMALL], runs[LARGE]
    grown = large["peak_anon_gb"] - small["peak_anon_gb"]
    assert grown < 0.25 * (large["feature_gb"] - small["feature_gb"]), runs
    for run in runs.values():
        assert run["rows_kept_fraction"] == 1.0
        assert 0.015 < run["values_missing_fraction"] < 0.025  # the generator's 2 %
        assert run["val_dates"] >= 4  # the whole validation period was scored
