"""The deflated Sharpe ratio is calibrated under the null: simulated searches of skill-less
trials with equal pairwise correlation reject (DSR > 0.95) at most at the 5 % it claims, with
the raw number of trials and the variance of the trials' Sharpe ratios, as ``hpo.evaluate``
reports it. The effective-number-of-trials variant it no longer reports is shown to reject
too often where trials are strongly correlated (correlation counted twice)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from trainers.metrics import deflated_sharpe_ratio

N_TRIALS, N_DATES, N_RUNS = 30, 250, 1000
LEVEL = 0.95
# The rejection rate is a binomial proportion over N_RUNS: a 5 % rate has an SE of ~0.7 %.
TOLERANCE = 2 * math.sqrt(0.05 * 0.95 / N_RUNS)


def _rejections(rho: float, *, effective: bool, seed: int) -> float:
    """Share of null searches whose chosen (max-Sharpe) trial gets DSR > LEVEL."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(N_RUNS):
        common = rng.normal(size=(N_DATES, 1))
        own = rng.normal(size=(N_DATES, N_TRIALS))
        r = math.sqrt(rho) * common + math.sqrt(1 - rho) * own  # (T, N), true Sharpe 0
        sharpes = r.mean(0) / r.std(0, ddof=1)
        best = int(np.argmax(sharpes))
        n = rho + (1 - rho) * N_TRIALS if effective else N_TRIALS
        x = r[:, best]
        dsr = deflated_sharpe_ratio(float(sharpes[best]), n_trials=max(1, round(n)),
                                    sharpe_variance=float(sharpes.var(ddof=1)), n_obs=N_DATES,
                                    skew=float(stats.skew(x)),
                                    kurtosis=float(stats.kurtosis(x, fisher=False)))
        hits += dsr > LEVEL
    return hits / N_RUNS


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.8, 0.95])
def test_raw_n_dsr_rejects_a_null_search_at_most_at_its_level(rho: float) -> None:
    assert _rejections(rho, effective=False, seed=int(rho * 100)) <= 0.05 + TOLERANCE


def test_the_effective_n_variant_over_rejects_correlated_trials() -> None:
    """Why it is gone: N_eff = rho + (1 - rho) N with the raw trials' Sharpe variance, which is
    already (1 - rho) times smaller, deflates far too little at rho = 0.95."""
    assert _rejections(0.95, effective=True, seed=95) > 0.05 + TOLERANCE
