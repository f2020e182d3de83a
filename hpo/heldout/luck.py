"""How much of the chosen trial is selection luck: the statistics of the held-out report
that look at every trial the study searched, not only the chosen one.

* :func:`searched_sharpes`: the validation Sharpe of every trial that showed one (complete,
  pruned at its last epoch, failed after an epoch): the N and the variance of the deflated
  Sharpe ratio.
* :func:`validation_returns`: the trials' per-date validation returns on their common dates,
  read from what each trial stored (``HeldOut.validation`` / ``HeldOut.returns``).
* :func:`deflation`: the deflated Sharpe ratio of the chosen trial's validation Sharpe, raw
  (calibrated by simulation: ``DSR_CALIBRATION``); :func:`psr_of_test`: the PSR of its test Sharpe.
* :func:`overfitting`: the probability of backtest overfitting (CSCV) of those returns.

The formulas live in :mod:`trainers.metrics` (``sharpe``, ``overfitting``); this module picks
the trials and records every input.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import polars as pl
from optuna.trial import FrozenTrial, TrialState

from hpo import attrs
from hpo.records import trial_attrs
from hpo.study import trial_dir
from trainers.heldout import HeldOut

# The deflated Sharpe ratio is a statistic of the Sharpe ratio, whatever picks the trial.
DSR_METRIC = "sharpe"
# The Sharpe ratios a study can select on; the deflated Sharpe ratio deflates the one it did.
SHARPES = (DSR_METRIC, "sharpe_net")


def finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


# Trials the choice was made among: every one that produced a validation figure. A pruned
# trial was judged on its last epoch and a trial that failed after an epoch was seen too, so
# both count; a running or surplus trial does not (nothing was chosen against it yet).
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _last_figure(t: FrozenTrial, metric: str) -> float | None:
    """The trial's ``metric``: its user attr (complete and pruned trials keep their last
    epoch's), else the last epoch of its ``history`` that has one (a trial that failed)."""
    value = t.user_attrs.get(metric)
    if finite_number(value):
        return float(value)
    for row in reversed(trial_attrs(t).get(attrs.HISTORY) or []):
        if isinstance(row, dict) and finite_number(row.get(metric)):
            return float(row[metric])
    return None


def deflated_metric(metric: str) -> str:
    """The Sharpe ratio the deflated Sharpe ratio deflates: the one selected on (gross or
    net), or the gross one when the study selected on another figure."""
    return metric if metric in SHARPES else DSR_METRIC


def searched_sharpes(study: optuna.Study, metric: str = DSR_METRIC) -> dict[int, float]:
    """Validation Sharpe of every trial that produced one (``COUNTED_STATES``): the trials the
    choice was made among, which the deflated Sharpe ratio accounts for."""
    out = {}
    for t in study.get_trials(deepcopy=False, states=COUNTED_STATES):
        if t.user_attrs.get(attrs.SURPLUS):
            continue
        value = _last_figure(t, metric)
        if value is not None:
            out[t.number] = value
    return out


def validation_returns(study: optuna.Study, heldout: HeldOut, output: Path,
                       numbers: list[int], trained: Any = None
                       ) -> tuple[np.ndarray, list[int], list[int]]:
    """(dates, trials) matrix of the validation long-short returns of the **complete** trials
    among ``numbers``: those scored on every validation date any of them was (a walk-forward
    trial pruned after k folds has k blocks and is left out, never allowed to shrink the
    dates); the trial numbers of its columns; the trials left out. ``trained``: the chosen
    trial's model; ``HeldOut.returns`` gets it with each trial's user attrs (a trial's own
    book, where it searched one)."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    series = {}
    for n in numbers:
        try:
            frame = heldout.validation(trial_dir(output, study.study_name, n))
        except (OSError, ValueError):  # pruned or failed before it wrote predictions
            continue
        series[n] = heldout.returns(frame, trained, trial_attrs(by_number[n]))
    if not series:
        return np.zeros((0, 0)), [], []
    dates = {n: set(frame["date"].to_list()) for n, frame in series.items()}
    every = set().union(*dates.values())
    cols = sorted(n for n in series if dates[n] >= every)
    left_out = sorted(set(series) - set(cols))
    keep = sorted(every)
    matrix = np.column_stack([
        series[n].filter(pl.col("date").is_in(keep)).sort("date")["ret"].to_numpy()
        for n in cols]) if keep and cols else np.zeros((len(keep), len(cols)))
    return matrix, cols, left_out


# Below these the luck statistics are printed as "too few trials to judge": with fewer trials
# one study's PBO under pure noise spans most of [0, 1] (the null interval shows it), and a
# CSCV block of fewer dates has no Sharpe ratio worth ranking.
MIN_JUDGED_TRIALS = 8
MIN_DATES_PER_BLOCK = 4
TOO_FEW = "too few trials to judge"
NULL_RUNS = 100  # pure-noise studies behind the PBO's null interval (seeded)
INTERVAL = (5.0, 95.0)  # percentiles of every interval reported


@functools.lru_cache(maxsize=32)
def pbo_null_interval(n_trials: int, n_dates: int, blocks: int) -> tuple[float, float]:
    """The 5th and 95th percentiles of the PBO of ``n_trials`` skill-less trials with i.i.d.
    normal returns over ``n_dates`` dates (``NULL_RUNS`` simulated studies, seed 0): the
    spread luck alone gives a study of this size."""
    from trainers.metrics.overfitting import probability_of_backtest_overfitting

    rng = np.random.default_rng(0)
    values = [probability_of_backtest_overfitting(rng.normal(size=(n_dates, n_trials)),
                                                  blocks=blocks)["value"]
              for _ in range(NULL_RUNS)]
    low, high = np.percentile(values, INTERVAL)
    return float(low), float(high)


def overfitting(matrix: np.ndarray, trials: list[int], *, blocks: int,
                left_out: list[int] | None = None) -> dict[str, Any]:
    """The probability of backtest overfitting of the complete trials' validation returns
    (CSCV, ``trainers.metrics.overfitting``), with the pure-noise interval for its size and a
    verdict; ``value`` None with the reason when it cannot be computed."""
    from trainers.metrics.overfitting import probability_of_backtest_overfitting

    base = {"of": "the complete trials' daily validation long-short returns (Sharpe ratio as "
                  "the performance)", "blocks": blocks, "trials": trials,
            "left_out": left_out or [], "dates": len(matrix)}
    try:
        got = probability_of_backtest_overfitting(matrix, blocks=blocks)
    except ValueError as exc:
        return {**base, "value": None, "reason": str(exc), "verdict": TOO_FEW}
    got.pop("logits")
    out = {**base, **{k: v for k, v in got.items() if k != "trials"}}
    if len(trials) < MIN_JUDGED_TRIALS or got["rows_per_block"] < MIN_DATES_PER_BLOCK:
        out["verdict"] = (f"{TOO_FEW} ({len(trials)} complete trials, {got['rows_per_block']} "
                          f"dates per block; needs >= {MIN_JUDGED_TRIALS} and >= "
                          f"{MIN_DATES_PER_BLOCK})")
    else:
        out["verdict"] = "judged"
    out["null_interval"] = list(pbo_null_interval(len(trials), len(matrix), blocks))
    return out


def dsr_interval(returns: np.ndarray, *, n_trials: int, sharpe_variance: float,
                 runs: int = 200, seed: int = 0) -> list[float] | None:
    """5th-95th percentile of the DSR over a moving-block bootstrap of the chosen trial's
    per-date returns (blocks of ~T^(1/3) dates; ``sharpe_variance`` per period, the searched
    trials' held fixed). None with fewer than 10 returns."""
    from scipy import stats

    from trainers.metrics import deflated_sharpe_ratio

    x = np.asarray(returns, dtype=np.float64)
    x = x[np.isfinite(x)]
    t = len(x)
    if t < 10:
        return None
    block = max(1, round(t ** (1.0 / 3.0)))
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, t - block + 1, size=(runs, math.ceil(t / block)))
    idx = (starts[:, :, None] + np.arange(block)).reshape(runs, -1)[:, :t]
    values = []
    for rep in x[idx]:
        sd = rep.std(ddof=1)
        if not sd > 0:
            continue
        values.append(deflated_sharpe_ratio(
            float(rep.mean() / sd), n_trials=n_trials, sharpe_variance=sharpe_variance,
            n_obs=t, skew=float(stats.skew(rep)), kurtosis=float(stats.kurtosis(rep,
                                                                               fisher=False))))
    values = [v for v in values if math.isfinite(v)]
    if len(values) < 2:
        return None
    return [float(v) for v in np.percentile(values, INTERVAL)]


# What the null simulation of tests/trainers/test_dsr_calibration.py shows of the figure.
DSR_CALIBRATION = ("raw number of trials with the variance of their Sharpe ratios: under the "
                   "null (30 skill-less trials, 250 dates, equal pairwise correlation 0 to "
                   "0.95, 1,000 searches each) P(DSR > 0.95) was 0.1 %, 2.4 %, 3.7 % and 4.0 %: "
                   "at most its 5 %. An effective-number-of-trials variant rejected 8.5 % at "
                   "correlation 0.95 (correlation counted twice) and is not reported")


def deflation(chosen_sharpe: float, moments: dict[str, float], *,
              sharpes: dict[int, float], correlation: float | None = None,
              states: dict[str, int] | None = None, label: str = "Sharpe (gross)",
              metric: str = DSR_METRIC, returns: np.ndarray | None = None) -> dict[str, Any]:
    """The deflated Sharpe ratio of the chosen trial's validation Sharpe (Bailey and Lopez de
    Prado 2014), with every input it used. ``moments``: the chosen trial's validation
    long-short moments (per period skewness, non-excess kurtosis, non-overlapping periods,
    periods per year); ``sharpes``: the annualised validation Sharpe of every trial searched
    (the raw count: calibrated, ``DSR_CALIBRATION``); ``correlation``: the mean pairwise
    correlation of the trials' validation returns, reported as a description only;
    ``returns``: the chosen trial's per-date validation returns, for the bootstrap interval
    (1-date targets only: an h-day target's overlapping returns are not its periods)."""
    from trainers.metrics import deflated_sharpe_ratio, expected_max_sharpe

    values = np.array(list(sharpes.values()), dtype=np.float64)
    variance = float(values.var(ddof=1)) if len(values) >= 2 else 0.0
    m = moments
    ppy = m["periods_per_year"]
    n_trials = max(1, len(values))

    value = deflated_sharpe_ratio(chosen_sharpe, n_trials=n_trials, sharpe_variance=variance,
                                  n_obs=int(m["n_obs"]), skew=m["skew"],
                                  kurtosis=m["kurtosis"], periods_per_year=ppy)
    benchmark = expected_max_sharpe(n_trials=n_trials, sharpe_variance=variance / ppy)
    return {"value": value, "of": f"the chosen trial's validation {label}",
           "metric": metric,
           "about": "the Sharpe ratio the study selected on (the net one when it optimised "
                    "sharpe_net), with every searched trial's value of it",
           "sharpe": chosen_sharpe, "n_trials": n_trials,
           "trials_counted": sorted(sharpes), "states_counted": states or {},
           "sharpe_variance": variance,
           "expected_max_sharpe": benchmark * math.sqrt(ppy), "n_obs": int(m["n_obs"]),
           "skew": m["skew"], "kurtosis": m["kurtosis"], "periods_per_year": ppy,
           "trials_mean_correlation": correlation, "calibration": DSR_CALIBRATION,
           "interval": (dsr_interval(returns, n_trials=n_trials,
                                     sharpe_variance=variance / ppy)
                        if returns is not None and int(m["n_obs"]) == int(
                            np.isfinite(returns).sum()) else None),
           "interval_of": "5th-95th percentile over a moving-block bootstrap of the chosen "
                          "trial's validation dates",
           "verdict": (f"{TOO_FEW} ({n_trials} searched; needs >= {MIN_JUDGED_TRIALS})"
                       if n_trials < MIN_JUDGED_TRIALS else "judged")}


def returns_of(heldout: HeldOut, frame: Any, model: Any, trial: FrozenTrial, *,
                net: bool) -> Any:
    """The chosen trial's per-date validation returns, gross or net (None without the hook,
    or for a net Sharpe when the hook gives no ``ret_net``)."""
    if not heldout.supports("returns"):
        return None
    series = heldout.returns(frame, model, trial_attrs(trial))
    column = "ret_net" if net else "ret"
    return series[column].to_numpy() if column in series.columns else None


def scoring_cost(model: Any, heldout: HeldOut) -> Any:
    """The cost per unit traded the study's net figures charge, as its report names it."""
    described = heldout.describe(model) if heldout.supports("describe") else {}
    return described.get("cost_bps", math.nan)


def psr_of_test(test_sharpe: float, moments: dict[str, float], *,
                label: str = "Sharpe (gross)") -> dict[str, Any]:
    """Probabilistic Sharpe ratio of a test Sharpe against 0: not deflated, since nothing was
    chosen on the test period."""
    from trainers.metrics import probabilistic_sharpe_ratio

    m = moments
    ok = math.isfinite(test_sharpe) and m["n_obs"] >= 2
    value = (probabilistic_sharpe_ratio(test_sharpe / math.sqrt(m["periods_per_year"]),
                                        benchmark=0.0, n_obs=int(m["n_obs"]), skew=m["skew"],
                                        kurtosis=m["kurtosis"]) if ok else math.nan)
    return {"value": value, "of": f"the chosen trial's test {label}, against 0",
            "n_obs": int(m["n_obs"]), "skew": m["skew"], "kurtosis": m["kurtosis"]}
