"""Sharpe-ratio statistics of a search: a trial's moments and the deflated Sharpe ratio.

The deflated Sharpe ratio (``deflated_sharpe_ratio``) of Bailey and Lopez de Prado (2014) is
the probability that the true Sharpe ratio exceeds the largest one that ``n_trials`` unrelated
strategies with no skill would have shown by luck; ``sharpe_moments`` gives its inputs for one
trial's predictions, ``expected_max_sharpe`` that largest lucky Sharpe ratio and
``probabilistic_sharpe_ratio`` the probability against any benchmark.
"""

from __future__ import annotations

import math

import numpy as np

from trainers.metrics._reduce import horizon_sharpe
from trainers.metrics.cross_section import _date_positions, per_date_metrics
from trainers.metrics.scoring import SCORING, Scoring


def sharpe_moments(
    dates: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray,
    *,
    codes: np.ndarray | None = None,
    scoring: Scoring = SCORING,
    net: bool = False,
) -> dict[str, float]:
    """The inputs of ``deflated_sharpe_ratio`` for one trial's long-short, in per-period units.

    Keys: ``sharpe`` (per period: ``panel_metrics``'s annualised ``sharpe`` divided by
    ``sqrt(periods_per_year / horizon)``), ``n_obs`` (non-overlapping periods: the usable
    long-short values / ``horizon``), ``skew`` and ``kurtosis`` (non-excess; the plain moment
    estimators ``scipy.stats.skew`` / ``kurtosis(fisher=False)`` of every usable per-date
    long-short, overlapping or not: each is an h-day return) and ``periods_per_year``
    (``periods_per_year / horizon``, to convert annualised figures). NaN where undefined.
    ``net``: of the long-short net of ``cost_bps`` (needs ``codes``; the Sharpe a study that
    selects on ``sharpe_net`` deflates) instead of the gross one. ``book``: how scores become
    weights (:mod:`trainers.metrics.book`).
    """
    from scipy import stats

    horizon, periods_per_year = scoring.horizon, scoring.periods_per_year
    per_date = per_date_metrics(dates, pred, target, codes=codes, scoring=scoring)
    position = _date_positions(dates, per_date["date"].to_numpy())
    long_short = per_date["long_short_net" if net else "long_short"].to_numpy()
    per_year = periods_per_year / horizon
    sharpe = horizon_sharpe(long_short, position, horizon, periods_per_year)
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
