"""A synthetic stock market with a planted, known signal, for the ATFT-GAT workload.

Each of the three parts of the ATFT-GAT model has something to find in it: a temporal encoder
(a latent alpha seen only through noisy features), graph attention (a signal that reaches a
stock only through its correlated peers) and frequency-adaptive normalisation (a large periodic
nuisance on every feature). Everything is drawn from ``numpy`` generators seeded with ``seed``,
so a seed fixes the whole market.

Notation: stock i in cluster c(i) of size n_c, date t, sigma_xs = sqrt(CLUSTER_VOL^2 +
IDIO_VOL^2) the cross-sectional return volatility. r_{i,t} is the return from date t to t+1.

Latent processes (unit-variance AR(1), stationary from the first date):

    a_{i,t} = PHI_OWN  * a_{i,t-1} + sqrt(1 - PHI_OWN^2)  * eps     own alpha (never observed)
    p_{i,t} = PHI_PEER * p_{i,t-1} + sqrt(1 - PHI_PEER^2) * eps     peer driver (observed)
    q_{i,t} = sqrt(n_c - 1) * mean_{j in c(i), j != i} p_{j,t}      peer signal, unit variance
                                                                    (0 in a one-stock cluster)

Expected and realised 1-day return (the oracle is mu; p_{i,t} has no effect on stock i):

    mu_{i,t} = sigma_xs * (own_strength * a_{i,t} + peer_strength * q_{i,t})
    r_{i,t}  = mu_{i,t} * (1 + payoff_noise * z_t)
               + MARKET_VOL * m_t + CLUSTER_VOL * g_{c(i),t} + IDIO_VOL * e_{i,t}

with z, m, g, e independent standard normals: the planted signal's payoff shock, a market
factor, a cluster (sector) factor and idiosyncratic noise. ``1 + payoff_noise * z_t`` is what
the signal actually pays on date t: 1 on average, so mu stays the expected return, but it
varies from day to day and is negative on some days, as any real alpha's payoff is (a
signal is a factor with a noisy return). Without it (``payoff_noise = 0``) a cross-section's
IC varies only by sampling, ~1/sqrt(n_stocks), so the ICIR and the Sharpe ratio of a fixed
signal grow without bound with the number of stocks.

Within a cluster, daily returns correlate at about
(MARKET_VOL^2 + CLUSTER_VOL^2) / total variance ~ 0.65, across clusters at ~ 0.15, so a
k-nearest-neighbour graph of trailing-return correlations recovers the clusters. Because
own_strength and peer_strength are in units of sigma_xs, the oracle's cross-sectional IC is
about sqrt(own^2 + peer^2) / sqrt(1 + own^2 + peer^2).

Features at date t (all float32, all known at t):

    f_own   = a_{i,t} + noise * e'_{i,t}   + S_i(t)    own alpha through fresh noise each day,
                                                       so averaging over a lookback helps
    f_peer  = p_{i,t}                      + S_i(t)    useless for i itself, useful for its
                                                       peers: only a graph can route it
    f_noise = e''_{i,t}                    + S_i(t)    a distractor
    f_ret_1d_past = r_{i,t-1}                          realised return t-1 -> t (builds graphs)
    f_ret_5d_past = prod_{k=1..5} (1 + r_{i,t-k}) - 1  realised return t-5 -> t

    S_i(t) = seasonal_amplitude * sin(2 pi t / P_i + phi_{i,f})

where the period P_i is drawn per stock from SEASONAL_PERIODS and the phase per stock and
feature. With the default amplitude its variance (A^2 / 2 = 4.5) dominates the signal's (1-2):
a nuisance that per-window frequency removal (FAN) takes out.

Targets at date t: ``ret_h = prod_{k=0..h-1} (1 + r_{i,t+k}) - 1`` for h in TARGET_HORIZONS,
the compounded forward return from t to t+h. The last h dates have no such future inside the
sample, so their ``ret_h`` is NaN (the feature cache's NaN policy drops or masks them).

Difficulty (``difficulty``, ``DIFFICULTIES``): named presets of ``own_strength``,
``peer_strength`` and ``payoff_noise``; an explicit value of one of them overrides its preset.

* ``"realistic"`` (the default) is calibrated on real daily equity signals: the oracle's 1-day
  RankIC is about 0.04 with a daily RankIC IR about 0.2, its quintile long-short Sharpe ratio
  about 3 before costs, and no raw feature reaches a RankIC of 0.03 (``f_own`` about 0.015).
  Figures measured over seeds and sizes are in docs/workloads.md.
* ``"easy"``: the market this module shipped first, bit for bit (same seed, same frame): the
  oracle's 1-day RankIC is about 0.15 (IR 0.8, Sharpe about 12), and raw ``f_own`` alone gets a
  Sharpe ratio about 6 at the demo's size. For quick demos and for tests that need a model to
  learn something in a few steps; its figures do not carry over to real markets.

In both, about 35-40% of the oracle's RankIC is lost when the peer term is left out of the
oracle (``oracle_own`` alone), see the tests. ``market_baselines`` scores the oracle and the
best raw feature on given dates: what a trial's figures should be read against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from scipy.signal import lfilter

from trainers.errors import UserError
from trainers.metrics import SCORING, Scoring, panel_metrics

# Daily volatilities of the return components. The cluster factor is the largest so that
# within-cluster correlation (~0.65) stands far above the cross-cluster one (~0.15).
MARKET_VOL = 0.008
CLUSTER_VOL = 0.015
IDIO_VOL = 0.012
XS_VOL = math.sqrt(CLUSTER_VOL**2 + IDIO_VOL**2)  # cross-sectional return volatility

PHI_OWN = 0.97  # half-life ~23 dates: the own alpha persists over the 20-day horizon
PHI_PEER = 0.9  # half-life ~7 dates
SEASONAL_PERIODS = (5, 10, 20)  # business days: weekly, fortnightly, monthly cycles
TARGET_HORIZONS = (1, 5, 10, 20)
PAST_DAYS = 5  # returns simulated before the first date, for f_ret_5d_past
MIN_RETURN = -0.99  # floor on a daily return, keeps log(1 + r) finite (never hit at defaults)

PAYOFF_STREAM = 1  # the payoff shocks come from their own generator, (seed, 1), so that
# every other draw, hence the whole easy market, is the same as before they existed


@dataclass(frozen=True)
class Difficulty:
    """A preset of the planted signal's strengths (units: see ``generate_market``)."""

    own_strength: float
    peer_strength: float
    payoff_noise: float


DIFFICULTIES = {
    # Calibrated (docs/workloads.md, "Synthetic market"): oracle RankIC ~0.04, daily IR ~0.2,
    # long-short Sharpe ~3; the payoff noise sets the IR, the strengths the RankIC.
    "realistic": Difficulty(own_strength=0.04, peer_strength=0.03, payoff_noise=4.5),
    # The first market: oracle RankIC ~0.15, IR ~0.8, Sharpe ~12. Quick demos and tests only.
    "easy": Difficulty(own_strength=0.10, peer_strength=0.13, payoff_noise=0.0),
}
DEFAULT_DIFFICULTY = "realistic"

FEATURE_NAMES = ("f_own", "f_peer", "f_noise", "f_ret_1d_past", "f_ret_5d_past")
TARGET_NAMES = tuple(f"ret_{h}d" for h in TARGET_HORIZONS)
ORACLE_COLUMNS = ("date", "code", "oracle", "oracle_own", "oracle_peer", "cluster")


def stock_codes(n_stocks: int) -> list[str]:
    """``S0001, S0002, ...``; the width grows past 9999 stocks so codes sort like their index."""
    width = max(4, len(str(n_stocks)))
    return [f"S{i + 1:0{width}d}" for i in range(n_stocks)]


def _ar1(rng: np.random.Generator, phi: float, shape: tuple[int, int]) -> np.ndarray:
    """Unit-variance stationary AR(1) along axis 0, shape (T, S), via one linear filter."""
    eps = rng.standard_normal(shape)
    start = rng.standard_normal(shape[1])  # a_{-1}, drawn from the stationary law
    out, _ = lfilter([math.sqrt(1.0 - phi**2)], [1.0, -phi], eps, axis=0, zi=(phi * start)[None])
    return out


def _check(
    n_stocks: int,
    n_dates: int,
    n_clusters: int,
    noise: float,
    missing_rate: float,
    difficulty: str,
    payoff_noise: float | None,
) -> None:
    problems = []
    if difficulty not in DIFFICULTIES:
        problems.append(
            f"difficulty must be one of {', '.join(map(repr, DIFFICULTIES))}, got {difficulty!r}"
        )
    if payoff_noise is not None and payoff_noise < 0:
        problems.append(f"payoff_noise must be >= 0, got {payoff_noise}")
    if n_stocks < 2:
        problems.append(f"n_stocks must be >= 2, got {n_stocks}")
    if n_dates < 2:
        problems.append(f"n_dates must be >= 2, got {n_dates}")
    if n_clusters < 1:
        problems.append(f"n_clusters must be >= 1, got {n_clusters}")
    if noise < 0:
        problems.append(f"noise must be >= 0, got {noise}")
    if not 0.0 <= missing_rate < 1.0:
        problems.append(f"missing_rate must be in [0, 1), got {missing_rate}")
    if problems:
        raise UserError("synthetic market: " + "; ".join(problems))


def generate_market(
    *,
    n_stocks: int = 200,
    n_dates: int = 500,
    seed: int = 0,
    n_clusters: int = 10,
    difficulty: str = DEFAULT_DIFFICULTY,
    own_strength: float | None = None,
    peer_strength: float | None = None,
    payoff_noise: float | None = None,
    noise: float = 1.0,
    seasonal_amplitude: float = 3.0,
    missing_rate: float = 0.0,
    start: str = "2020-01-01",
    return_oracle: bool = False,
) -> pl.DataFrame | tuple[pl.DataFrame, pl.DataFrame]:
    """Simulate the market described in the module docstring.

    Args:
        n_clusters: number of sectors; capped at ``n_stocks`` so that tiny markets work.
        difficulty: ``"realistic"`` or ``"easy"`` (``DIFFICULTIES``, module docstring): the
            preset of the three strengths below; None in any of them takes the preset's value.
        own_strength, peer_strength: standard deviations of the own and peer parts of the
            expected 1-day return, in units of the cross-sectional return volatility.
        payoff_noise: standard deviation of the planted signal's daily payoff around 1
            (0 = the signal pays exactly its expectation every day).
        noise: standard deviation of the daily observation noise on ``f_own``, in units of
            the latent alpha's (1 = one day's feature is half signal, half noise).
        seasonal_amplitude: amplitude of the periodic nuisance added to ``f_own``, ``f_peer``
            and ``f_noise`` (whose signal parts have unit variance).
        missing_rate: share of (date, stock) rows dropped at random, to exercise masks
            (0 = a complete panel).
        start: first date; dates are consecutive business days (Mon-Fri) from it.
        return_oracle: also return the oracle frame (``ORACLE_COLUMNS``): the planted expected
            1-day return ``oracle`` = ``oracle_own`` + ``oracle_peer`` and each stock's cluster,
            for the same rows.

    Returns:
        A frame sorted by (date, code) with columns ``date`` (pl.Date), ``code`` (str),
        ``FEATURE_NAMES`` (float32) and ``TARGET_NAMES`` (float32); or ``(frame, oracle)``.
    """
    _check(n_stocks, n_dates, n_clusters, noise, missing_rate, difficulty, payoff_noise)
    preset = DIFFICULTIES[difficulty]
    own_strength = preset.own_strength if own_strength is None else own_strength
    peer_strength = preset.peer_strength if peer_strength is None else peer_strength
    payoff_noise = preset.payoff_noise if payoff_noise is None else payoff_noise
    n_clusters = min(n_clusters, n_stocks)
    rng = np.random.default_rng(seed)
    n_steps = n_dates + PAST_DAYS  # step u = date index t + PAST_DAYS
    shape = (n_steps, n_stocks)

    # Balanced clusters in random order, so codes say nothing about clusters.
    cluster = rng.permutation(np.arange(n_stocks) % n_clusters)  # (S,)
    size = np.bincount(cluster, minlength=n_clusters)[cluster]  # (S,) n_c of each stock

    own = _ar1(rng, PHI_OWN, shape)  # (T, S) a
    driver = _ar1(rng, PHI_PEER, shape)  # (T, S) p
    membership = np.eye(n_clusters)[cluster]  # (S, C) one-hot
    cluster_sum = driver @ membership  # (T, C) sum of p over each cluster
    with np.errstate(invalid="ignore", divide="ignore"):
        peer = (cluster_sum[:, cluster] - driver) / np.sqrt(size - 1)  # (T, S) q, unit var
    peer[:, size == 1] = 0.0
    mu_own = XS_VOL * own_strength * own
    mu_peer = XS_VOL * peer_strength * peer

    market = rng.standard_normal((n_steps, 1))
    sector = rng.standard_normal((n_steps, n_clusters))[:, cluster]
    signal = mu_own + mu_peer  # (T, S) expected return
    if payoff_noise > 0:  # what each part pays on each date; the parts' shocks independent
        shock = np.random.default_rng((seed, PAYOFF_STREAM)).standard_normal((n_steps, 2))
        signal = mu_own * (1.0 + payoff_noise * shock[:, :1]) + mu_peer * (
            1.0 + payoff_noise * shock[:, 1:]
        )
    ret = (
        signal + MARKET_VOL * market + CLUSTER_VOL * sector + IDIO_VOL * rng.standard_normal(shape)
    )
    ret = np.maximum(ret, MIN_RETURN)
    ret[-1] = np.nan  # return from the last date onwards: beyond the sample
    # log_wealth[u] = sum_{v < u} log(1 + r_v); a compounded return is a difference of two.
    log_wealth = np.concatenate([np.zeros((1, n_stocks)), np.cumsum(np.log1p(ret), axis=0)])

    t = np.arange(n_dates)
    u = t + PAST_DAYS
    period = rng.choice(SEASONAL_PERIODS, size=n_stocks)  # (S,)
    phase = rng.uniform(0.0, 2 * math.pi, size=(3, n_stocks))  # (features, S)
    season = seasonal_amplitude * np.sin(
        2 * math.pi * t[None, :, None] / period[None, None, :] + phase[:, None, :]
    )  # (3, D, S)

    columns = {
        "f_own": own[u] + noise * rng.standard_normal((n_dates, n_stocks)) + season[0],
        "f_peer": driver[u] + season[1],
        "f_noise": rng.standard_normal((n_dates, n_stocks)) + season[2],
        "f_ret_1d_past": ret[u - 1],
        "f_ret_5d_past": np.expm1(log_wealth[u] - log_wealth[u - 5]),
    }
    for h, name in zip(TARGET_HORIZONS, TARGET_NAMES, strict=True):
        ahead = np.minimum(u + h, n_steps)  # clipped rows are NaN through ret[-1] anyway
        columns[name] = np.expm1(log_wealth[ahead] - log_wealth[u])
        columns[name][u + h > n_steps - 1] = np.nan  # needs r beyond the last date

    keep = (
        rng.random(n_dates * n_stocks) >= missing_rate
        if missing_rate > 0
        else np.ones(n_dates * n_stocks, dtype=bool)
    )
    days = np.busday_offset(np.datetime64(start, "D"), t, roll="forward")  # (D,) Mon-Fri
    codes = pl.Series("code", stock_codes(n_stocks))
    stock_of_row = np.tile(np.arange(n_stocks), n_dates)[keep]
    frame = pl.DataFrame(
        {
            "date": np.repeat(days, n_stocks)[keep],
            "code": codes.gather(stock_of_row),
            **{
                name: values.reshape(-1)[keep].astype(np.float32)
                for name, values in columns.items()
            },
        }
    )
    if not return_oracle:
        return frame
    oracle = pl.DataFrame(
        {
            "date": frame["date"],
            "code": frame["code"],
            "oracle": (mu_own[u] + mu_peer[u]).reshape(-1)[keep],
            "oracle_own": mu_own[u].reshape(-1)[keep],
            "oracle_peer": mu_peer[u].reshape(-1)[keep],
            "cluster": cluster[stock_of_row].astype(np.int32),
        }
    )
    return frame, oracle


# -- baselines ------------------------------------------------------------------------------
MIN_SELECTION_DATES = 20  # fewer earlier dates than this: the best feature is chosen in-sample


def oracle_forecast(oracle: pl.DataFrame, horizon: int = 1) -> np.ndarray:
    """The planted expected h-date return of each row of an oracle frame (``ORACLE_COLUMNS``).

    The latent parts are AR(1), so ``E[mu_{t+k} | t] = phi^k mu_t`` for each part and the
    expected summed return over t..t+h-1 is ``oracle_own * sum_k PHI_OWN^k + oracle_peer *
    sum_k PHI_PEER^k`` (k < h); the payoff shocks have mean 1 and are independent of
    everything known at t. The compounding of ``ret_h`` is ignored (second order: a product
    of two daily returns). For h = 1 it is the ``oracle`` column.
    """
    if horizon < 1:
        raise UserError(f"horizon must be >= 1, got {horizon}")
    own = sum(PHI_OWN**k for k in range(horizon))
    peer = sum(PHI_PEER**k for k in range(horizon))
    return oracle["oracle_own"].to_numpy() * own + oracle["oracle_peer"].to_numpy() * peer


def _as_date_array(dates: Any) -> np.ndarray:
    return np.asarray(pl.Series(dates).cast(pl.Date).to_numpy()).astype("datetime64[D]")


def market_baselines(
    market: pl.DataFrame | tuple[pl.DataFrame, pl.DataFrame],
    dates: Any,
    *,
    scoring: Scoring = SCORING,
    selection_dates: Any = None,
    features: Sequence[str] | None = None,
) -> dict[str, Any]:
    """What a trial scored on ``dates`` should be read against: the planted oracle and the best
    raw feature, scored with ``panel_metrics`` (``scoring``: horizon, cost, book...) on the
    ``ret_{horizon}d`` target of ``dates``.

    Args:
        market: a frame with ``date``, ``code``, the feature columns and ``ret_{horizon}d``,
            plus ``oracle_own`` and ``oracle_peer`` for the oracle (a synthetic market joined
            with its oracle frame); or the ``(frame, oracle)`` pair that
            ``generate_market(return_oracle=True)`` returns. A panel without the oracle
            columns (a real one) gets ``"oracle": None``.
        dates: the report dates (e.g. a study's validation or test dates).
        selection_dates: the dates on which the best feature and its sign are chosen (by mean
            RankIC). Default: every date of ``market`` before the first report date whose
            h-date target ends before it (the last ``horizon`` earlier dates are left out, as
            their targets reach into the report period); if there are fewer than
            ``MIN_SELECTION_DATES`` of those, the report dates themselves, and the result says
            so: a best feature chosen in-sample is flattered by the choice.
        features: the candidate columns (default: ``FEATURE_NAMES`` present in ``market``,
            else every column whose name starts with ``f_``).

    Returns:
        ``{"oracle": metrics | None, "best_feature": {"name", "sign", "chosen_on",
        "n_selection_dates", "selection_rank_ic", **metrics}}``, with ``metrics`` the dict
        of ``panel_metrics`` (Sharpe at ``horizon``) and ``sign`` -1.0 where the feature
        ranks best reversed. ``chosen_on`` is ``"earlier dates"``, ``"selection dates"`` or
        ``"report dates (in-sample)"``. The oracle is ``oracle_forecast(horizon)``.
    """
    horizon = scoring.horizon
    if isinstance(market, tuple):
        frame, oracle = market
        market = frame.with_columns(
            oracle_own=oracle["oracle_own"], oracle_peer=oracle["oracle_peer"]
        )
    target_name = f"ret_{horizon}d"
    if target_name not in market.columns:
        raise UserError(
            f"market_baselines: no target column {target_name!r} for horizon={horizon}; "
            f"columns: {market.columns}"
        )
    if features is None:
        features = [c for c in FEATURE_NAMES if c in market.columns] or [
            c for c in market.columns if c.startswith("f_")
        ]
    missing = [c for c in features if c not in market.columns]
    if not features or missing:
        raise UserError(
            f"market_baselines: feature column(s) {missing or '(none)'} not in "
            f"the market; columns: {market.columns}"
        )
    all_dates = _as_date_array(market["date"])
    report = _as_date_array(dates)
    in_report = np.isin(all_dates, report)
    if not in_report.any():
        raise UserError("market_baselines: none of the report dates is in the market")
    chosen_on = "selection dates"
    if selection_dates is None:
        grid = np.unique(all_dates)
        earlier = grid[grid < report.min()]
        candidates = earlier[: max(len(earlier) - horizon, 0)]
        chosen_on = "earlier dates"
        if len(candidates) < MIN_SELECTION_DATES:
            candidates, chosen_on = np.unique(report), "report dates (in-sample)"
        in_selection = np.isin(all_dates, candidates)
    else:
        in_selection = np.isin(all_dates, _as_date_array(selection_dates))
    target = market[target_name].to_numpy().astype(np.float64)
    codes = market["code"].to_numpy() if "code" in market.columns else None

    def score(rows: np.ndarray, pred: np.ndarray) -> dict[str, float]:
        return panel_metrics(
            all_dates[rows],
            pred[rows],
            target[rows],
            codes=None if codes is None else codes[rows],
            scoring=scoring,
        )

    best, best_ic = features[0], -math.inf
    sign = 1.0
    for name in features:
        ic = score(in_selection, market[name].to_numpy().astype(np.float64))["rank_ic"]
        if math.isfinite(ic) and abs(ic) > best_ic:
            best, best_ic, sign = name, abs(ic), 1.0 if ic >= 0 else -1.0
    best_pred = sign * market[best].to_numpy().astype(np.float64)
    oracle_metrics = (
        score(in_report, oracle_forecast(market, horizon))
        if {"oracle_own", "oracle_peer"} <= set(market.columns)
        else None
    )
    return {
        "oracle": oracle_metrics,
        "best_feature": {
            "name": best,
            "sign": sign,
            "chosen_on": chosen_on,
            "n_selection_dates": float(len(np.unique(all_dates[in_selection]))),
            "selection_rank_ic": sign * best_ic if math.isfinite(best_ic) else math.nan,
            **score(in_report, best_pred),
        },
    }
