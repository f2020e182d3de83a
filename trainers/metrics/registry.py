"""The cross-sectional ranking metrics, in one place: adding one is one entry of ``METRICS``.

Each :class:`Metric` says how its figure is computed from a panel's per-date series (and, if
it has a bootstrap standard error, from the resampled ones), which way is better, and where it
is shown. Everything that lists these metrics reads it from here: the keys of
``panel_metrics`` (in the order of ``METRICS``), the standard errors of
``panel_metrics_with_se``, and, through :func:`directions`, :func:`reported` and
:func:`table`, the workload's objectives and the held-out report.

The figures (``panel_metrics``), from the per-date series of ``per_date_metrics``:

* ``rank_ic``, ``ic``: means of the per-date series.
* ``rank_icir``, ``icir``: mean / standard deviation (ddof=1) of the per-date RankIC and IC
  series respectively. They are **not annualised** (a per-date information ratio; multiply by
  ``sqrt(periods_per_year)`` yourself to annualise).
* ``hit_rate``: pooled share ``sum(hits) / sum(n_hit)`` over all usable dates, i.e. the share
  of valid rows with a nonzero target whose sign the model got right.
* ``long_short_mean``: mean of the per-date long-short series (of h-day returns for an h-day
  target; not annualised).
* ``sharpe``: the annualised Sharpe ratio of the long-short series, with no transaction costs,
  borrow or slippage: a ranking-quality score, not a backtest. With ``horizon = 1`` (a 1-day
  target, rebalanced every date) it is ``mean / std (ddof=1) * sqrt(periods_per_year)`` of the
  daily series. With ``horizon = h > 1`` the target is an h-day return, so consecutive dates'
  long-shorts overlap by h - 1 days and are strongly autocorrelated: annualising their ratio
  with ``sqrt(periods_per_year)`` overstates the Sharpe ratio by up to ``sqrt(h)`` (about 38
  instead of 8.5 for the 20-day oracle of the easy synthetic market). Instead the series is
  cut into ``h`` **phases**, phase k holding the dates at positions k, k + h, k + 2h, ... of
  the panel's distinct dates: each phase is a strategy that holds an h-day position and
  rebalances every h dates, with non-overlapping returns. Each phase's Sharpe ratio is
  ``mean / std (ddof=1) * sqrt(periods_per_year / h)``, and ``sharpe`` is the **mean over the
  phases** (so it does not depend on which date the rebalancing calendar starts on).
  Positions count every distinct date of the input, usable or not, so the panel must hold
  every trading date of its span.
* ``n_dates``: the number of usable dates (a count, not an objective).

A bootstrap replicate of a figure is the same reduction applied to each row of the resampled
(replicates, dates) grids; the reductions skip NaN cells (dates with no usable value).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from trainers.metrics._reduce import (
    horizon_sharpe,
    mean,
    nan_mean,
    nan_ratio,
    phase_mean,
    ratio,
)

DIRECTIONS = ("maximize", "minimize")
# The figure every report and table leads with: the one hpo picks the chosen Pareto-front
# trial by. The others follow in the order of METRICS.
HEADLINE = "sharpe"


@dataclass(frozen=True)
class PerDate:
    """One panel's per-date series (the rows of ``per_date_metrics``), one entry per usable
    date, and what a Sharpe ratio needs to annualise them."""

    rank_ic: np.ndarray  # (G,) NaN on a date whose pred or target is constant
    ic: np.ndarray  # (G,)
    long_short: np.ndarray  # (G,)
    turnover: np.ndarray  # (G,) NaN without codes, on no book and on a phase's first book
    long_short_net: np.ndarray  # (G,) long_short less its trading cost; NaN without codes
    hits: np.ndarray  # (G,) int
    n_hit: np.ndarray  # (G,) int
    position: np.ndarray  # (G,) index of each usable date among all the input's dates
    horizon: int
    periods_per_year: float


@dataclass(frozen=True)
class Replicates:
    """Moving-block bootstrap replicates of the per-date series: (B, m) grids, one row per
    replicate, NaN where the resampled date has no usable value. m is a multiple of
    ``horizon`` and phase k of a row is its columns k, k + h, k + 2h, ..."""

    rank_ic: np.ndarray  # (B, m)
    ic: np.ndarray  # (B, m)
    long_short: np.ndarray  # (B, m)
    turnover: np.ndarray  # (B, m)
    long_short_net: np.ndarray  # (B, m)
    horizon: int
    periods_per_year: float


# The per-date series the bootstrap resamples: the fields of Replicates that are grids.
RESAMPLED = ("rank_ic", "ic", "long_short", "turnover", "long_short_net")


@dataclass(frozen=True, kw_only=True)
class Metric:
    """One figure of ``panel_metrics``.

    ``value`` computes it on a panel. ``replicate`` computes it on every bootstrap replicate
    at once, giving a (B,) array; ``None`` means it gets no standard error. ``direction`` is
    its natural optimisation direction, ``None`` for a figure that is no objective (a count).
    ``table``: a column of the compact validation/test tables; ``reported``: a figure of the
    held-out report.
    """

    name: str
    direction: str | None
    value: Callable[[PerDate], float]
    replicate: Callable[[Replicates], np.ndarray] | None = None
    table: bool = False
    reported: bool = True

    def __post_init__(self) -> None:
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise ValueError(
                f"metric {self.name!r}: direction must be one of {DIRECTIONS} or None, "
                f"got {self.direction!r}"
            )

    @property
    def has_se(self) -> bool:
        return self.replicate is not None


def _hit_rate(s: PerDate) -> float:
    n_hit = int(s.n_hit.sum())
    return float(s.hits.sum()) / n_hit if n_hit else math.nan


def _sharpe(s: PerDate) -> float:
    return horizon_sharpe(s.long_short, s.position, s.horizon, s.periods_per_year)


def _sharpe_net(s: PerDate) -> float:
    return horizon_sharpe(s.long_short_net, s.position, s.horizon, s.periods_per_year)


def _turnover(s: PerDate) -> float:
    return phase_mean(s.turnover, s.position, s.horizon)


def _by_phase(grid: np.ndarray, horizon: int) -> np.ndarray:
    """(B, m) replicate grid -> (B, periods, h): phase k is the last axis' entry k."""
    b, m = grid.shape
    return grid.reshape(b, m // horizon, horizon)


def _sharpe_of(grid: np.ndarray, r: Replicates) -> np.ndarray:
    sharpe = nan_ratio(_by_phase(grid, r.horizon), axis=1)  # (B, h)
    return nan_mean(sharpe * math.sqrt(r.periods_per_year / r.horizon), axis=1)


def _sharpe_replicates(r: Replicates) -> np.ndarray:
    return _sharpe_of(r.long_short, r)


def _sharpe_net_replicates(r: Replicates) -> np.ndarray:
    return _sharpe_of(r.long_short_net, r)


def _turnover_replicates(r: Replicates) -> np.ndarray:
    return nan_mean(nan_mean(_by_phase(r.turnover, r.horizon), axis=1), axis=1)


# In the key order of panel_metrics, which every trial's stored history has had since the
# first release; reports lead with HEADLINE instead.
METRICS: tuple[Metric, ...] = (
    Metric(name="rank_ic", direction="maximize", table=True,
           value=lambda s: mean(s.rank_ic), replicate=lambda r: nan_mean(r.rank_ic, axis=1)),
    Metric(name="ic", direction="maximize",
           value=lambda s: mean(s.ic), replicate=lambda r: nan_mean(r.ic, axis=1)),
    Metric(name="icir", direction="maximize",
           value=lambda s: ratio(s.ic), replicate=lambda r: nan_ratio(r.ic, axis=1)),
    Metric(name="rank_icir", direction="maximize",
           value=lambda s: ratio(s.rank_ic), replicate=lambda r: nan_ratio(r.rank_ic, axis=1)),
    Metric(name="hit_rate", direction="maximize", value=_hit_rate),
    Metric(name="sharpe", direction="maximize", table=True,
           value=_sharpe, replicate=_sharpe_replicates),
    Metric(name="long_short_mean", direction="maximize", value=lambda s: mean(s.long_short)),
    Metric(name="n_dates", direction=None, value=lambda s: float(len(s.rank_ic))),
    # Costs (trainers.metrics.turnover): NaN for a panel scored without stock codes.
    Metric(name="sharpe_net", direction="maximize", table=True,
           value=_sharpe_net, replicate=_sharpe_net_replicates),
    Metric(name="turnover", direction="minimize", table=True,
           value=_turnover, replicate=_turnover_replicates),
)
_BY_NAME = {m.name: m for m in METRICS}
if len(_BY_NAME) != len(METRICS) or HEADLINE not in _BY_NAME:
    raise ValueError(f"METRICS needs unique names including {HEADLINE!r}; got {list(_BY_NAME)}")


def get(name: str) -> Metric:
    """The registered metric ``name``."""
    if name not in _BY_NAME:
        raise KeyError(f"no cross-sectional metric {name!r}; registered: {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def names() -> tuple[str, ...]:
    """Every registered metric: the keys of ``panel_metrics``, in their order."""
    return tuple(_BY_NAME)


def _display() -> tuple[Metric, ...]:
    return (_BY_NAME[HEADLINE], *(m for m in METRICS if m.name != HEADLINE))


def directions() -> dict[str, str]:
    """``{name: "maximize" | "minimize"}`` of every metric that can be an objective (all but
    ``n_dates``), headline first: ``sharpe, rank_ic, ic, icir, rank_icir, hit_rate,
    long_short_mean``."""
    return {m.name: m.direction for m in _display() if m.direction is not None}


def reported() -> tuple[str, ...]:
    """The figures of the held-out report, headline first: ``sharpe, rank_ic, ic, icir,
    rank_icir, hit_rate, long_short_mean, n_dates``."""
    return tuple(m.name for m in _display() if m.reported)


def table() -> tuple[str, ...]:
    """The columns of the compact tables, headline first: ``sharpe, rank_ic, sharpe_net,
    turnover`` (gross and net of costs side by side; IC and ICIR are in the full report)."""
    return tuple(m.name for m in _display() if m.table)


def with_se() -> tuple[str, ...]:
    """The metrics with a bootstrap standard error, headline first: ``sharpe, rank_ic, ic,
    icir, rank_icir``."""
    return tuple(m.name for m in _display() if m.has_se)
