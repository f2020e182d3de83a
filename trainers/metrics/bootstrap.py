"""Bootstrap standard errors of the panel metrics (``panel_metrics_with_se``).

They come from a **moving-block bootstrap over dates** with a fixed seed: blocks of
``block_length`` consecutive dates (a multiple of the horizon, so a block keeps the phase
structure and the overlap of h-day targets) are drawn with replacement, every statistic is
recomputed on each replicate, and its standard error is the standard deviation (ddof=1) of the
replicates. The cross-section of a date is never split: the dependence between stocks of one
date (sector moves) stays inside the resampled unit. Default block length:
``h * ceil(D^(1/3) / h)`` for D dates, the usual D^(1/3) rate for the variance of a mean,
rounded up to whole horizons. Which metrics get one, and how each is recomputed on a
replicate, is said by :mod:`trainers.metrics.registry`.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from trainers.metrics.cross_section import _date_positions, _summaries, per_date_metrics
from trainers.metrics.registry import METRICS, RESAMPLED, Replicates, with_se
from trainers.metrics.scoring import SCORING, Scoring

DEFAULT_N_BOOT = 1000  # bootstrap replicates: the SE's own relative error is ~1/sqrt(2B) ~ 2%
DEFAULT_BOOT_SEED = 0
SE_METRICS = with_se()


def default_block_length(n_dates: int, horizon: int = 1) -> int:
    """``h * ceil(n_dates^(1/3) / h)``: the D^(1/3) rule for a mean, in whole horizons."""
    return horizon * max(1, math.ceil(n_dates ** (1.0 / 3.0) / horizon))


def panel_metrics_with_se(
    dates: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray,
    *,
    codes: np.ndarray | None = None,
    scoring: Scoring = SCORING,
    n_boot: int = DEFAULT_N_BOOT,
    block_length: int | None = None,
    seed: int = DEFAULT_BOOT_SEED,
) -> dict[str, dict[str, float]]:
    """``panel_metrics`` with a bootstrap standard error for each of ``SE_METRICS``.

    Returns ``{name: {"value": v, "se": s}}`` for every key of ``panel_metrics`` (``se`` is
    NaN for ``hit_rate``, ``long_short_mean`` and ``n_dates``, which get none), plus
    ``"bootstrap": {"n_boot", "block_length", "seed"}``. The standard errors come from the
    moving-block bootstrap over dates described in the module docstring: ``n_boot``
    replicates, each of ``ceil(D / block_length)`` blocks of ``block_length`` consecutive
    positions among the input's D distinct dates (unusable dates included, as NaN), drawn with
    a ``numpy`` generator seeded with ``seed``; a replicate statistic that is undefined (too
    few values) is left out of the standard deviation. ``block_length`` must be a multiple of
    ``horizon`` (default: ``default_block_length(D, horizon)``). With fewer than two blocks'
    worth of dates, or fewer than 2 usable replicates, an SE is NaN.
    """
    _check_n_boot(n_boot)
    horizon, periods_per_year = scoring.horizon, scoring.periods_per_year
    per_date = per_date_metrics(dates, pred, target, codes=codes, scoring=scoring)
    position = _date_positions(dates, per_date["date"].to_numpy())
    values = _summaries(per_date, position, horizon, periods_per_year)
    n_grid = int(position.max()) + 1 if len(position) else 0
    block_length = _block_length(block_length, n_grid, horizon)
    se = dict.fromkeys(values, math.nan)  # stays NaN for a metric with no replicate
    if n_grid >= 2 * block_length:
        index = _block_index(n_grid, block_length, n_boot, seed)
        replicates = _replicates(per_date, position, n_grid, index, horizon, periods_per_year)
        for metric in METRICS:
            if metric.replicate is not None:
                se[metric.name] = _sd(metric.replicate(replicates))
    out: dict[str, dict[str, float]] = {
        name: {"value": value, "se": se[name]} for name, value in values.items()
    }
    out["bootstrap"] = _settings(n_boot, block_length, seed)
    return out


def _block_length(block_length: int | None, n_grid: int, horizon: int) -> int:
    if block_length is None:
        return default_block_length(max(n_grid, 1), horizon)
    if block_length < 1 or block_length % horizon:
        raise ValueError(
            f"block_length must be a positive multiple of horizon={horizon}, so blocks keep "
            f"whole non-overlapping periods; got {block_length}"
        )
    return block_length


def _block_index(n_grid: int, block_length: int, n_boot: int, seed: int) -> np.ndarray:
    """(B, m) positions of the resampled dates: ``ceil(D / block_length)`` blocks per
    replicate, each ``block_length`` consecutive positions from a uniform start."""
    rng = np.random.default_rng(seed)
    n_blocks = math.ceil(n_grid / block_length)
    starts = rng.integers(0, n_grid - block_length + 1, size=(n_boot, n_blocks))
    return (starts[:, :, None] + np.arange(block_length)).reshape(n_boot, -1)


def _replicates(per_date: pl.DataFrame, position: np.ndarray, n_grid: int, index: np.ndarray,
                horizon: int, periods_per_year: float) -> Replicates:
    grid = {}
    for name in RESAMPLED:
        grid[name] = np.full(n_grid, np.nan)  # (D,) every distinct date, usable or not
        grid[name][position] = per_date[name].to_numpy()
    return Replicates(**{k: v[index] for k, v in grid.items()}, horizon=horizon,
                      periods_per_year=periods_per_year)


def _sd(reps: np.ndarray) -> float:
    """Standard deviation (ddof=1) of the finite replicates; NaN with fewer than 2."""
    reps = reps[np.isfinite(reps)]
    return float(reps.std(ddof=1)) if len(reps) >= 2 else math.nan


def _settings(n_boot: int, block_length: int, seed: int) -> dict[str, float]:
    return {"n_boot": float(n_boot), "block_length": float(block_length), "seed": float(seed)}


def paired_difference(
    a: pl.DataFrame,
    b: pl.DataFrame,
    *,
    scoring: Scoring = SCORING,
    n_boot: int = DEFAULT_N_BOOT,
    block_length: int | None = None,
    seed: int = DEFAULT_BOOT_SEED,
) -> dict[str, dict[str, float]]:
    """Every figure of predictions frame ``a`` minus that of ``b`` (e.g. a trial and a
    baseline on the same dates), with a **paired** bootstrap standard error.

    Both frames are resampled with the same blocks of dates in every replicate (the moving-
    block bootstrap of ``panel_metrics_with_se`` over the union of their dates), and the SE
    is the standard deviation of the replicate differences. Shared day-to-day noise (a market
    that is easy for every ranking on some dates) cancels, so the SE of a difference is far
    below the two SEs combined when the two rankings are alike. Returns ``{name: {"value",
    "se"}}`` for every metric plus ``"bootstrap"``; ``se`` is NaN where a metric has none.
    """
    _check_n_boot(n_boot)
    horizon, periods_per_year = scoring.horizon, scoring.periods_per_year
    frames = (a, b)
    for frame in frames:
        _check_frame(frame)
    grid = np.unique(np.concatenate([f["date"].to_numpy() for f in frames]))
    sides = []
    for frame in frames:
        per_date = per_date_metrics(*_columns(frame), codes=_codes(frame), scoring=scoring)
        position = np.searchsorted(grid, per_date["date"].to_numpy())
        sides.append((per_date, position,
                      _summaries(per_date, position, horizon, periods_per_year)))
    values = {name: sides[0][2][name] - sides[1][2][name] for name in sides[0][2]}
    n_grid = len(grid)
    block_length = _block_length(block_length, n_grid, horizon)
    se = dict.fromkeys(values, math.nan)
    if n_grid >= 2 * block_length:
        index = _block_index(n_grid, block_length, n_boot, seed)
        reps = [_replicates(p, pos, n_grid, index, horizon, periods_per_year)
                for p, pos, _ in sides]
        for metric in METRICS:
            if metric.replicate is not None:
                se[metric.name] = _sd(metric.replicate(reps[0]) - metric.replicate(reps[1]))
    out: dict[str, dict[str, float]] = {
        name: {"value": value, "se": se[name]} for name, value in values.items()
    }
    out["bootstrap"] = _settings(n_boot, block_length, seed)
    return out


def predictions_metrics_with_se(
    predictions: pl.DataFrame,
    *,
    scoring: Scoring = SCORING,
    n_boot: int = DEFAULT_N_BOOT,
    block_length: int | None = None,
    seed: int = DEFAULT_BOOT_SEED,
) -> dict[str, dict[str, float]]:
    """``panel_metrics_with_se`` on a predictions frame with columns ``date, pred, target``
    and, for turnover and the net Sharpe ratio, ``code`` (others are ignored), e.g. a
    trial's ``predictions.parquet``."""
    _check_frame(predictions)
    return panel_metrics_with_se(*_columns(predictions), codes=_codes(predictions),
                                 scoring=scoring, n_boot=n_boot, block_length=block_length,
                                 seed=seed)


def _check_n_boot(n_boot: int) -> None:
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2 (a standard deviation needs two); got {n_boot}")


def _check_frame(frame: pl.DataFrame) -> None:
    missing = [c for c in ("date", "pred", "target") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"predictions frame lacks column(s) {missing}; it needs date, pred and target, "
            f"got {frame.columns}"
        )


def _columns(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return frame["date"].to_numpy(), frame["pred"].to_numpy(), frame["target"].to_numpy()


def _codes(frame: pl.DataFrame) -> np.ndarray | None:
    """The frame's ``code`` column (stock identities, for turnover), None without one."""
    return frame["code"].to_numpy() if "code" in frame.columns else None

