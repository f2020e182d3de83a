"""Reductions of per-date series to one number, NaN-tolerant: the metrics' building blocks.

The scalar ones (:func:`mean`, :func:`ratio`, :func:`horizon_sharpe`) reduce one panel's
series; the array ones (:func:`nan_mean`, :func:`nan_ratio`) reduce many bootstrap replicates
at once along an axis. All of them skip non-finite values and give NaN, never an exception,
when too few values are left.
"""

from __future__ import annotations

import math

import numpy as np


def mean(x: np.ndarray) -> float:
    """Mean of the finite values; NaN if there are none."""
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else math.nan


def ratio(x: np.ndarray, scale: float = 1.0) -> float:
    """mean / std (ddof=1) * scale over the finite values; NaN if undefined."""
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return math.nan
    sd = float(x.std(ddof=1))
    if not sd > 0.0:
        return math.nan
    return float(x.mean()) / sd * scale


def horizon_sharpe(
    long_short: np.ndarray, position: np.ndarray, horizon: int, periods_per_year: float
) -> float:
    """Mean over the h phases of each phase's annualised Sharpe ratio (see
    :mod:`trainers.metrics.registry`); ``position`` is each value's index among all the
    panel's distinct dates, which decides its phase."""
    scale = math.sqrt(periods_per_year / horizon)
    if horizon == 1:
        return ratio(long_short, scale)
    phase = position % horizon
    sharpes = np.array([ratio(long_short[phase == k], scale) for k in range(horizon)])
    return mean(sharpes)


def phase_mean(values: np.ndarray, position: np.ndarray, horizon: int) -> float:
    """Mean over the h phases of each phase's mean (finite values only): a per-book figure
    combined across the staggered books as :func:`horizon_sharpe` combines Sharpe ratios."""
    if horizon == 1:
        return mean(values)
    phase = position % horizon
    return mean(np.array([mean(values[phase == k]) for k in range(horizon)]))


def nan_ratio(x: np.ndarray, axis: int) -> np.ndarray:
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


def nan_mean(x: np.ndarray, axis: int) -> np.ndarray:
    """Mean of the finite values along ``axis``; NaN where there are none."""
    finite = np.isfinite(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite, x, 0.0).sum(axis) / finite.sum(axis)
