"""Financial metrics of a cross-sectional ranking model, as pure functions over a panel.

A panel is three aligned 1-D arrays, one entry per (date, stock) row: the row's ``dates``
key (any sortable dtype: ``datetime64``, int, str), the model's ``pred`` and the realised
``target`` (a forward return). Every metric is computed **per date first** (one cross-section
at a time), and only then averaged over dates, so a date with many stocks weighs as much as a
date with few.

Per-date quantities (``per_date_metrics``):

* ``rank_ic``: Spearman correlation of pred vs target within the date (Pearson of the
  average ranks, ties share their mean rank, as :func:`scipy.stats.spearmanr`).
* ``ic``: Pearson correlation of pred vs target within the date.
* ``long_short``: equal-weight mean target of the top ``quantile`` of stocks by pred minus that
  of the bottom ``quantile``. Each leg holds ``max(1, floor(quantile * n))`` stocks. Ties in
  pred are broken by row order (stable sort; a cache panel is sorted by code, so the tie-break
  is by code), which makes the legs deterministic.
* ``hits`` / ``n_hit``: how many rows have ``sign(pred) == sign(target)`` / how many rows have
  a nonzero target. Rows with a zero target are excluded (no direction to guess); a zero pred
  against a nonzero target is a miss.

Panel summaries (``panel_metrics``):

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
* ``n_dates``: the number of usable dates (see below).

Standard errors (``panel_metrics_with_se``, ``predictions_metrics_with_se``) come from a
**moving-block bootstrap over dates** with a fixed seed: blocks of ``block_length``
consecutive dates (a multiple of the horizon, so a block keeps the phase structure and the
overlap of h-day targets) are drawn with replacement, every statistic is recomputed on each
replicate, and its standard error is the standard deviation (ddof=1) of the replicates. The
cross-section of a date is never split: the dependence between stocks of one date (sector
moves) stays inside the resampled unit. Default block length: ``h * ceil(D^(1/3) / h)`` for D
dates, the usual D^(1/3) rate for the variance of a mean, rounded up to whole horizons.

The deflated Sharpe ratio (``deflated_sharpe_ratio``) of Bailey and Lopez de Prado (2014):
the probability that the true Sharpe ratio exceeds the largest one that ``n_trials``
unrelated strategies with no skill would have shown by luck, see its docstring.

NaN policy:

* Rows whose pred or target is NaN (or +-inf) are dropped, date by date.
* Dates left with fewer than ``min_stocks`` valid rows are skipped entirely (no row in
  ``per_date_metrics``). The default of 5 is the smallest cross-section on which the metrics
  mean something: below it a Spearman correlation takes only a handful of distinct values
  (with 3 stocks: -1, -0.5, 0.5, 1) and the two 20% legs of a long-short would overlap.
* On a date where pred (or target) is constant, the correlations and the long-short are
  undefined (NaN): the date still counts for the hit rate but is skipped in the means of the
  correlations and of the long-short, and in their standard deviations.
* A summary with no usable value (no usable date; fewer than 2 values for a standard deviation;
  a zero standard deviation) is NaN, never an exception: an HPO objective must always get a
  number back, and NaN tells Optuna the trial produced no signal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

DEFAULT_QUANTILE = 0.2  # quintile legs, the usual equity long-short convention
DEFAULT_MIN_STOCKS = 5  # see the module docstring: smallest cross-section worth scoring
TRADING_DAYS_PER_YEAR = 252

PER_DATE_COLUMNS = ("date", "n", "rank_ic", "ic", "long_short", "hits", "n_hit")


def _check_inputs(
    dates: np.ndarray, pred: np.ndarray, target: np.ndarray, quantile: float, min_stocks: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dates = np.asarray(dates)
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if not (dates.ndim == pred.ndim == target.ndim == 1):
        raise ValueError(
            "dates, pred and target must be 1-D arrays (one entry per (date, stock) row); got "
            f"shapes {dates.shape}, {pred.shape}, {target.shape}"
        )
    if not (len(dates) == len(pred) == len(target)):
        raise ValueError(
            f"dates, pred and target must have the same length; got {len(dates)}, "
            f"{len(pred)}, {len(target)}"
        )
    if not 0.0 < quantile <= 0.5:
        raise ValueError(
            f"quantile must be in (0, 0.5] so the two legs cannot overlap; got {quantile}"
        )
    if min_stocks < 2:
        raise ValueError(
            f"min_stocks must be >= 2 (a correlation needs two points); got {min_stocks}"
        )
    return dates, pred, target


@dataclass(frozen=True)
class _Layout:
    """Where each (valid) row goes in a (G, M) matrix: one matrix row per date, the date's
    rows from the left in input order; M is the largest date's row count."""

    dates: np.ndarray  # (G,) unique dates, ascending
    counts: np.ndarray  # (G,) rows per date
    group: np.ndarray  # (N,) matrix row of each input row
    column: np.ndarray  # (N,) matrix column of each input row

    def dense(self, values: np.ndarray, pad: float) -> np.ndarray:
        m = np.full((len(self.dates), int(self.counts.max())), pad)
        m[self.group, self.column] = values
        return m


def _layout(dates: np.ndarray) -> _Layout:
    if len(dates) > 1 and not np.all(dates[1:] >= dates[:-1]):
        uniq, group = np.unique(dates, return_inverse=True)
        group = group.reshape(-1)
        # A stable sort keeps each date's rows in input order (the legs' tie-break).
        order = np.argsort(group, kind="stable")
        counts = np.bincount(group, minlength=len(uniq))
        column = np.empty(len(group), dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        column[order] = np.arange(len(group)) - np.repeat(starts, counts)
    else:  # the usual case, a panel sorted by date: a linear scan, no sort
        first = np.ones(len(dates), dtype=bool)
        first[1:] = dates[1:] != dates[:-1]
        uniq, group = dates[first], np.cumsum(first) - 1
        counts = np.bincount(group, minlength=len(uniq))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        column = np.arange(len(group)) - starts[group]
    return _Layout(uniq, counts, group, column)


def _centred_sorted_ranks(sorted_values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Average ranks minus their mean (n + 1) / 2, for rows sorted ascending with padding
    after the first ``counts[g]`` cells; padding reads 0. Ties share the mean of their
    positions."""
    g, m = sorted_values.shape
    position = np.arange(m, dtype=np.float64)
    valid = position[None, :] < counts[:, None]
    ranks = np.broadcast_to(position + 1.0, (g, m)).copy()  # no ties: rank = position + 1
    tied = np.zeros((g, m), dtype=bool)
    tied[:, 1:] = (sorted_values[:, 1:] == sorted_values[:, :-1]) & valid[:, 1:]
    rows = np.flatnonzero(tied.any(1))
    if len(rows):  # only dates with ties pay for the run bookkeeping
        sub = tied[rows]
        new_run = ~sub
        k = np.broadcast_to(np.arange(m), sub.shape)
        run_start = np.maximum.accumulate(np.where(new_run, k, 0), axis=1)
        run_end_flag = np.ones_like(sub)
        run_end_flag[:, :-1] = new_run[:, 1:]
        run_end = np.minimum.accumulate(np.where(run_end_flag, k, m)[:, ::-1], axis=1)[:, ::-1]
        ranks[rows] = (run_start + run_end) / 2.0 + 1.0
    ranks -= ((counts + 1) / 2.0)[:, None]
    ranks[~valid] = 0.0
    return ranks


def _order_ties_by_column(order: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """Make an argsort stable: within runs of equal values, order by column (= row order).

    The unstable (SIMD) argsort is several times faster than a stable one, and ties are rare,
    so only the tied positions are re-sorted.
    """
    tied_next = np.zeros(sorted_values.shape, dtype=bool)
    tied_next[:, :-1] = (sorted_values[:, 1:] == sorted_values[:, :-1]) & np.isfinite(
        sorted_values[:, 1:]
    )
    if not tied_next.any():
        return order
    in_run = tied_next.copy()
    in_run[:, 1:] |= tied_next[:, :-1]
    rows, cols = np.nonzero(in_run)  # row-major: each run's cells are contiguous, in order
    run_id = np.cumsum(~np.concatenate([[False], tied_next[rows[:-1], cols[:-1]]]))
    resorted = np.lexsort((order[rows, cols], run_id))
    order = order.copy()
    order[rows, cols] = order[rows, cols][resorted]
    return order


def per_date_metrics(
    dates: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray,
    *,
    quantile: float = DEFAULT_QUANTILE,
    min_stocks: int = DEFAULT_MIN_STOCKS,
) -> pl.DataFrame:
    """One row per usable date, sorted by date: ``date, n, rank_ic, ic, long_short, hits, n_hit``.

    ``n`` is the number of valid rows of the date. ``rank_ic``, ``ic`` and ``long_short`` are NaN
    on a date whose pred or target is constant. See the module docstring for the definitions and
    the NaN policy.

    Vectorised over a (dates, largest date) matrix: per-date sums are row sums, ranks and legs
    come from numpy's SIMD argsort along the stock axis. No Python loop over dates or rows.
    Memory is a few float64 copies of that matrix (about 24 MB each at 750 x 4,000).
    """
    dates, pred, target = _check_inputs(dates, pred, target, quantile, min_stocks)
    keep = np.isfinite(pred) & np.isfinite(target)
    if not keep.all():
        dates, pred, target = dates[keep], pred[keep], target[keep]
    lay = _layout(dates)
    if (lay.counts < min_stocks).any():  # drop the rows of dates with too few stocks
        rows = lay.counts[lay.group] >= min_stocks
        dates, pred, target = dates[rows], pred[rows], target[rows]
        lay = _layout(dates)
    n_dates = len(lay.dates)
    if n_dates == 0:
        empty = {c: np.zeros(0) for c in PER_DATE_COLUMNS[1:]}
        return pl.DataFrame({"date": lay.dates, **empty}).with_columns(
            pl.col("n", "hits", "n_hit").cast(pl.Int64)
        )
    n = lay.counts.astype(np.float64)
    p = lay.dense(pred, 0.0)  # (G, M), zero padding
    t = lay.dense(target, 0.0)
    width = p.shape[1]
    padding = np.arange(width)[None, :] >= lay.counts[:, None]  # (G, M)
    has_padding = bool(padding.any())

    # IC: centre per date, then row sums (padding must stay 0 after centring).
    p_c = p - (p.sum(1) / n)[:, None]
    t_c = t - (t.sum(1) / n)[:, None]
    if has_padding:
        p_c[padding] = 0.0
        t_c[padding] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        ic = (p_c * t_c).sum(1) / np.sqrt(np.square(p_c).sum(1) * np.square(t_c).sum(1))
    del p_c, t_c
    # Hits: the product is > 0 exactly when both signs agree and neither is 0; padding is 0.
    hits = (p * t > 0).sum(1)
    n_hit = (t != 0).sum(1)

    # Ranks: +inf padding sorts last, so each date's values fill sorted positions 0..n-1.
    if has_padding:
        p[padding] = np.inf
        t[padding] = np.inf
    order_p = np.argsort(p, axis=1)
    p_sorted = np.take_along_axis(p, order_p, axis=1)
    order_p = _order_ties_by_column(order_p, p_sorted)  # the legs break ties by row order
    order_t = np.argsort(t, axis=1)
    t_sorted = np.take_along_axis(t, order_t, axis=1)
    rank_p = np.empty_like(p)  # centred ranks, back in input layout; padding 0
    np.put_along_axis(rank_p, order_p, _centred_sorted_ranks(p_sorted, lay.counts), axis=1)
    t_ranks_sorted = _centred_sorted_ranks(t_sorted, lay.counts)
    rank_t = np.empty_like(t)
    np.put_along_axis(rank_t, order_t, t_ranks_sorted, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rank_ic = (rank_p * rank_t).sum(1) / np.sqrt(
            np.square(rank_p).sum(1) * np.square(t_ranks_sorted).sum(1)
        )

    # Legs: the target in ascending pred order; bottom = first n_leg, top = last n_leg valid.
    # The epsilon keeps e.g. 0.2 * 15 = 3.0000000000000004 from rounding down to 2.
    n_leg = np.maximum(1.0, np.floor(n * quantile + 1e-9))  # (G,)
    t_by_p = np.take_along_axis(t, order_p, axis=1)  # (G, M)
    position = np.arange(width)[None, :]
    bottom = np.where(position < n_leg[:, None], t_by_p, 0.0).sum(1)
    in_top = (position >= (n - n_leg)[:, None]) & (position < n[:, None])
    top = np.where(in_top, t_by_p, 0.0).sum(1)
    long_short = (top - bottom) / n_leg

    rows = np.arange(n_dates)
    last = lay.counts - 1
    constant = (p_sorted[:, 0] == p_sorted[rows, last]) | (t_sorted[:, 0] == t_sorted[rows, last])
    for series in (rank_ic, ic, long_short):
        series[constant] = np.nan
    return pl.DataFrame(
        {
            "date": lay.dates,
            "n": lay.counts.astype(np.int64),
            "rank_ic": rank_ic,
            "ic": ic,
            "long_short": long_short,
            "hits": hits.astype(np.int64),
            "n_hit": n_hit.astype(np.int64),
        }
    )


def _mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else math.nan


def _ratio(x: np.ndarray, scale: float = 1.0) -> float:
    """mean / std (ddof=1) * scale over the finite values; NaN if undefined."""
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return math.nan
    sd = float(x.std(ddof=1))
    if not sd > 0.0:
        return math.nan
    return float(x.mean()) / sd * scale


def _check_horizon(horizon: int) -> int:
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ValueError(
            f"horizon must be a whole number of dates >= 1 (the target's length); got {horizon!r}"
        )
    return int(horizon)


def _date_positions(dates: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Index of each usable date among all distinct dates of the input (usable or not)."""
    dates = np.asarray(dates)
    if len(dates) > 1 and np.all(dates[1:] >= dates[:-1]):
        first = np.ones(len(dates), dtype=bool)
        first[1:] = dates[1:] != dates[:-1]
        grid = dates[first]
    else:
        grid = np.unique(dates)
    return np.searchsorted(grid, usable)


def _horizon_sharpe(
    long_short: np.ndarray, position: np.ndarray, horizon: int, periods_per_year: float
) -> float:
    """Mean over the h phases of each phase's annualised Sharpe ratio (module docstring)."""
    scale = math.sqrt(periods_per_year / horizon)
    if horizon == 1:
        return _ratio(long_short, scale)
    phase = position % horizon
    sharpes = np.array([_ratio(long_short[phase == k], scale) for k in range(horizon)])
    return _mean(sharpes)


def _summaries(
    per_date: pl.DataFrame, position: np.ndarray, horizon: int, periods_per_year: float
) -> dict[str, float]:
    rank_ic = per_date["rank_ic"].to_numpy()
    ic = per_date["ic"].to_numpy()
    long_short = per_date["long_short"].to_numpy()
    n_hit = int(per_date["n_hit"].sum())
    return {
        "rank_ic": _mean(rank_ic),
        "ic": _mean(ic),
        "icir": _ratio(ic),
        "rank_icir": _ratio(rank_ic),
        "hit_rate": float(per_date["hits"].sum()) / n_hit if n_hit else math.nan,
        "sharpe": _horizon_sharpe(long_short, position, horizon, periods_per_year),
        "long_short_mean": _mean(long_short),
        "n_dates": float(per_date.height),
    }


def panel_metrics(
    dates: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray,
    *,
    horizon: int = 1,
    quantile: float = DEFAULT_QUANTILE,
    min_stocks: int = DEFAULT_MIN_STOCKS,
    periods_per_year: int = TRADING_DAYS_PER_YEAR,
) -> dict[str, float]:
    """Summaries of the per-date series, as plain floats.

    Keys: ``rank_ic, ic, icir, rank_icir, hit_rate, sharpe, long_short_mean, n_dates``
    (``n_dates`` is a float too, so the dict is uniformly JSON- and Optuna-friendly). ICIR is
    not annualised; the Sharpe ratio is, on non-overlapping ``horizon``-date periods (the
    number of dates the target spans: 20 for a 20-day forward return). See the module
    docstring for the definitions and the NaN policy.
    """
    horizon = _check_horizon(horizon)
    per_date = per_date_metrics(dates, pred, target, quantile=quantile, min_stocks=min_stocks)
    position = (
        _date_positions(dates, per_date["date"].to_numpy())
        if horizon > 1
        else np.arange(per_date.height)
    )
    return _summaries(per_date, position, horizon, periods_per_year)


# -- standard errors ----------------------------------------------------------------------
DEFAULT_N_BOOT = 1000  # bootstrap replicates: the SE's own relative error is ~1/sqrt(2B) ~ 2%
DEFAULT_BOOT_SEED = 0
SE_METRICS = ("sharpe", "rank_ic", "ic", "rank_icir", "icir")


def default_block_length(n_dates: int, horizon: int = 1) -> int:
    """``h * ceil(n_dates^(1/3) / h)``: the D^(1/3) rule for a mean, in whole horizons."""
    return horizon * max(1, math.ceil(n_dates ** (1.0 / 3.0) / horizon))


def _nan_ratio(x: np.ndarray, axis: int) -> np.ndarray:
    """mean / std (ddof=1) over the finite values along ``axis``; NaN where undefined."""
    finite = np.isfinite(x)
    count = finite.sum(axis)
    z = np.where(finite, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = z.sum(axis) / count
        dev = np.where(finite, x - np.expand_dims(mean, axis), 0.0)
        sd = np.sqrt(np.square(dev).sum(axis) / (count - 1))
        out = mean / sd
    out[(count < 2) | ~(sd > 0)] = np.nan
    return out


def _nan_mean(x: np.ndarray, axis: int) -> np.ndarray:
    finite = np.isfinite(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite, x, 0.0).sum(axis) / finite.sum(axis)


def _replicate_stats(
    grids: dict[str, np.ndarray], horizon: int, periods_per_year: float
) -> dict[str, np.ndarray]:
    """The SE_METRICS of each row of (B, m) date grids (NaN = no usable value that date);
    m is a multiple of the horizon and phase k of a row is its columns k, k + h, ..."""
    b, m = grids["long_short"].shape
    by_phase = grids["long_short"].reshape(b, m // horizon, horizon)
    sharpe = _nan_ratio(by_phase, axis=1) * math.sqrt(periods_per_year / horizon)  # (B, h)
    return {
        "sharpe": _nan_mean(sharpe, axis=1),
        "rank_ic": _nan_mean(grids["rank_ic"], axis=1),
        "ic": _nan_mean(grids["ic"], axis=1),
        "rank_icir": _nan_ratio(grids["rank_ic"], axis=1),
        "icir": _nan_ratio(grids["ic"], axis=1),
    }


def panel_metrics_with_se(
    dates: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray,
    *,
    horizon: int = 1,
    quantile: float = DEFAULT_QUANTILE,
    min_stocks: int = DEFAULT_MIN_STOCKS,
    periods_per_year: int = TRADING_DAYS_PER_YEAR,
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
    horizon = _check_horizon(horizon)
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2 (a standard deviation needs two); got {n_boot}")
    per_date = per_date_metrics(dates, pred, target, quantile=quantile, min_stocks=min_stocks)
    position = _date_positions(dates, per_date["date"].to_numpy())
    values = _summaries(per_date, position, horizon, periods_per_year)
    n_grid = int(position.max()) + 1 if len(position) else 0
    if block_length is None:
        block_length = default_block_length(max(n_grid, 1), horizon)
    if block_length < 1 or block_length % horizon:
        raise ValueError(
            f"block_length must be a positive multiple of horizon={horizon}, so blocks keep "
            f"whole non-overlapping periods; got {block_length}"
        )
    se = dict.fromkeys(values, math.nan)
    if n_grid >= 2 * block_length:
        grid = {}
        for name in ("rank_ic", "ic", "long_short"):
            grid[name] = np.full(n_grid, np.nan)
            grid[name][position] = per_date[name].to_numpy()
        rng = np.random.default_rng(seed)
        n_blocks = math.ceil(n_grid / block_length)
        starts = rng.integers(0, n_grid - block_length + 1, size=(n_boot, n_blocks))
        index = (starts[:, :, None] + np.arange(block_length)).reshape(n_boot, -1)  # (B, m)
        stats = _replicate_stats({k: v[index] for k, v in grid.items()}, horizon, periods_per_year)
        for name, reps in stats.items():
            reps = reps[np.isfinite(reps)]
            se[name] = float(reps.std(ddof=1)) if len(reps) >= 2 else math.nan
    out: dict[str, dict[str, float]] = {
        name: {"value": value, "se": se[name] if name in SE_METRICS else math.nan}
        for name, value in values.items()
    }
    out["bootstrap"] = {
        "n_boot": float(n_boot),
        "block_length": float(block_length),
        "seed": float(seed),
    }
    return out


def predictions_metrics_with_se(
    predictions: pl.DataFrame,
    *,
    horizon: int = 1,
    quantile: float = DEFAULT_QUANTILE,
    min_stocks: int = DEFAULT_MIN_STOCKS,
    periods_per_year: int = TRADING_DAYS_PER_YEAR,
    n_boot: int = DEFAULT_N_BOOT,
    block_length: int | None = None,
    seed: int = DEFAULT_BOOT_SEED,
) -> dict[str, dict[str, float]]:
    """``panel_metrics_with_se`` on a predictions frame with columns ``date, pred, target``
    (``code`` and any others are ignored), e.g. a trial's ``predictions.parquet``."""
    missing = [c for c in ("date", "pred", "target") if c not in predictions.columns]
    if missing:
        raise ValueError(
            f"predictions frame lacks column(s) {missing}; it needs date, pred and target, "
            f"got {predictions.columns}"
        )
    return panel_metrics_with_se(
        predictions["date"].to_numpy(),
        predictions["pred"].to_numpy(),
        predictions["target"].to_numpy(),
        horizon=horizon,
        quantile=quantile,
        min_stocks=min_stocks,
        periods_per_year=periods_per_year,
        n_boot=n_boot,
        block_length=block_length,
        seed=seed,
    )


def sharpe_moments(
    dates: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray,
    *,
    horizon: int = 1,
    quantile: float = DEFAULT_QUANTILE,
    min_stocks: int = DEFAULT_MIN_STOCKS,
    periods_per_year: int = TRADING_DAYS_PER_YEAR,
) -> dict[str, float]:
    """The inputs of ``deflated_sharpe_ratio`` for one trial's long-short, in per-period units.

    Keys: ``sharpe`` (per period: ``panel_metrics``'s annualised ``sharpe`` divided by
    ``sqrt(periods_per_year / horizon)``), ``n_obs`` (non-overlapping periods: the usable
    long-short values / ``horizon``), ``skew`` and ``kurtosis`` (non-excess; the plain moment
    estimators ``scipy.stats.skew`` / ``kurtosis(fisher=False)`` of every usable per-date
    long-short, overlapping or not: each is an h-day return) and ``periods_per_year``
    (``periods_per_year / horizon``, to convert annualised figures). NaN where undefined.
    """
    from scipy import stats

    horizon = _check_horizon(horizon)
    per_date = per_date_metrics(dates, pred, target, quantile=quantile, min_stocks=min_stocks)
    position = _date_positions(dates, per_date["date"].to_numpy())
    long_short = per_date["long_short"].to_numpy()
    per_year = periods_per_year / horizon
    sharpe = _horizon_sharpe(long_short, position, horizon, periods_per_year)
    finite = long_short[np.isfinite(long_short)]
    spread = len(finite) >= 3 and float(np.ptp(finite)) > 0
    return {
        "sharpe": sharpe / math.sqrt(per_year),
        "n_obs": len(finite) / horizon,
        "skew": float(stats.skew(finite)) if spread else math.nan,
        "kurtosis": float(stats.kurtosis(finite, fisher=False)) if spread else math.nan,
        "periods_per_year": per_year,
    }


# -- deflated Sharpe ratio ----------------------------------------------------------------
EULER_GAMMA = 0.5772156649015329  # Euler-Mascheroni constant, in E[max of N normals]


def expected_max_sharpe(*, n_trials: int, sharpe_variance: float) -> float:
    """Expected largest Sharpe ratio among ``n_trials`` independent trials with true Sharpe 0
    whose estimated Sharpe ratios have variance ``sharpe_variance`` (Bailey and Lopez de
    Prado 2014, eq. 4; false strategy theorem)::

        SR_0 = sqrt(V) * ((1 - gamma) * Phi^-1(1 - 1/N) + gamma * Phi^-1(1 - 1/(N e)))

    with gamma the Euler-Mascheroni constant. Units are those of the Sharpe ratios whose
    variance V is (per period in ``deflated_sharpe_ratio``). ``n_trials = 1`` gives 0: one
    strategy with no skill has an expected Sharpe ratio of 0 (the formula itself diverges).
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1; got {n_trials}")
    if not sharpe_variance >= 0:
        raise ValueError(f"sharpe_variance must be >= 0; got {sharpe_variance}")
    if n_trials == 1:
        return 0.0
    from scipy.stats import norm

    return math.sqrt(sharpe_variance) * (
        (1.0 - EULER_GAMMA) * norm.ppf(1.0 - 1.0 / n_trials)
        + EULER_GAMMA * norm.ppf(1.0 - 1.0 / (n_trials * math.e))
    )


def probabilistic_sharpe_ratio(
    sharpe: float, *, benchmark: float, n_obs: float, skew: float, kurtosis: float
) -> float:
    """P(true Sharpe > ``benchmark``) given an estimated per-period ``sharpe`` from ``n_obs``
    returns with the given skewness and (non-excess, normal = 3) kurtosis (Bailey and Lopez de
    Prado 2012)::

        PSR = Phi((SR - SR*) * sqrt(n_obs - 1) / sqrt(1 - skew * SR + (kurtosis - 1) / 4 * SR^2))

    Both Sharpe ratios are per period (per h-day period for h-day returns), not annualised.
    NaN where the variance term is not positive (inconsistent moments).
    """
    if n_obs < 2:
        raise ValueError(f"n_obs must be >= 2 returns; got {n_obs}")
    from scipy.stats import norm

    var = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if not var > 0:
        return math.nan
    return float(norm.cdf((sharpe - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(var)))


def deflated_sharpe_ratio(
    sharpe: float,
    *,
    n_trials: int,
    sharpe_variance: float,
    n_obs: float,
    skew: float,
    kurtosis: float,
    periods_per_year: float | None = None,
) -> float:
    """Deflated Sharpe ratio (Bailey and Lopez de Prado 2014): the probabilistic Sharpe ratio
    of ``sharpe`` against ``expected_max_sharpe(n_trials, sharpe_variance)``, the best Sharpe
    ratio that ``n_trials`` skill-less trials would show by luck. A value above 0.95 says the
    best trial's Sharpe ratio is unlikely to be an artefact of the search.

    Units: the formula works in **per-period** Sharpe ratios (the Sharpe ratio of the
    ``n_obs`` returns themselves: daily, or per h-day period). With ``periods_per_year=None``
    ``sharpe`` and ``sharpe_variance`` (the variance across the trials of their Sharpe
    ratios) are taken as per period. Given ``periods_per_year`` (252 for daily returns,
    252 / h for h-day ones) they are taken as annualised ``SR_per_period * sqrt(ppy)`` and
    converted: ``sharpe / sqrt(ppy)`` and ``sharpe_variance / ppy``. ``skew`` and ``kurtosis``
    (non-excess: 3 for normal returns) are those of the chosen trial's ``n_obs`` returns;
    ``sharpe_moments`` gives all four for a trial's predictions.
    ``n_trials`` should count effectively independent trials; HPO trials are correlated, so
    the number of trials run is an upper bound (it deflates more than needed).
    """
    if periods_per_year is not None:
        if not periods_per_year > 0:
            raise ValueError(f"periods_per_year must be > 0; got {periods_per_year}")
        sharpe = sharpe / math.sqrt(periods_per_year)
        sharpe_variance = sharpe_variance / periods_per_year
    benchmark = expected_max_sharpe(n_trials=n_trials, sharpe_variance=sharpe_variance)
    return probabilistic_sharpe_ratio(
        sharpe, benchmark=benchmark, n_obs=n_obs, skew=skew, kurtosis=kurtosis
    )
