"""Small hand-made panels for tests and examples (the real synthetic market lives in
``trainers.atft_gat.synthetic``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import polars as pl

from cache.spec import DEFAULT_TARGETS, CacheSpec


def make_panel(*, n_stocks: int = 5, n_dates: int = 4, n_features: int = 3, seed: int = 0,
               shuffle: bool = True) -> pl.DataFrame:
    """A complete (date, code) panel: features ``f0..``, the four default targets.

    Values are random but distinct per cell; rows are shuffled by default so that tests see
    the cache sort them. Codes are zero-padded strings ("0001"), which a careless CSV
    reader would turn into integers.
    """
    rng = np.random.default_rng(seed)
    start = dt.date(2024, 1, 1)
    dates = [start + dt.timedelta(days=i) for i in range(n_dates)]
    codes = [f"{i + 1:04d}" for i in range(n_stocks)]
    rows = n_stocks * n_dates
    frame = pl.DataFrame({
        "date": np.repeat(np.array(dates, dtype="datetime64[D]"), n_stocks),
        "code": codes * n_dates,
        **{f"f{j}": rng.standard_normal(rows).astype(np.float32) for j in range(n_features)},
        **{t: (rng.standard_normal(rows) * 0.01).astype(np.float32) for t in DEFAULT_TARGETS},
    })
    if shuffle:
        frame = frame.sample(fraction=1.0, shuffle=True, seed=seed)
    return frame


def panel_spec(**options: Any) -> CacheSpec:
    """A CacheSpec naming ``make_panel``'s four targets (a file source must name them)."""
    return CacheSpec(**{"target_columns": DEFAULT_TARGETS, **options})
