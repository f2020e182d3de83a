"""PBO and the effective number of trials, against the paper's procedure written out."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from trainers.metrics.overfitting import effective_trials, probability_of_backtest_overfitting


def direct_pbo(returns: np.ndarray, blocks: int) -> tuple[float, list[float]]:
    """Bailey et al. 2015, section 2, step by step, one split at a time."""
    t, n = returns.shape
    size = t // blocks
    parts = [returns[i * size:(i + 1) * size] for i in range(blocks)]
    logits = []
    for chosen in itertools.combinations(range(blocks), blocks // 2):
        train = np.vstack([parts[i] for i in chosen])
        test = np.vstack([parts[i] for i in range(blocks) if i not in chosen])
        is_sr = train.mean(0) / train.std(0, ddof=1)
        oos_sr = test.mean(0) / test.std(0, ddof=1)
        star = int(np.argmax(is_sr))
        rank = int((oos_sr < oos_sr[star]).sum()) + 1
        w = rank / (n + 1)
        logits.append(math.log(w / (1 - w)))
    return float(np.mean(np.array(logits) <= 0)), logits


def test_pbo_equals_the_papers_procedure_on_a_small_matrix() -> None:
    rng = np.random.default_rng(3)
    returns = rng.standard_normal((48, 5)) * 0.01 + rng.normal(0, 0.002, 5)
    got = probability_of_backtest_overfitting(returns, blocks=6)
    expected, logits = direct_pbo(returns, 6)
    assert got["value"] == expected
    np.testing.assert_allclose(got["logits"], logits, rtol=1e-12)
    assert got["splits"] == math.comb(6, 3) and got["trials"] == 5


def test_luck_alone_gives_one_half_and_real_skill_gives_near_zero() -> None:
    rng = np.random.default_rng(0)
    values = []
    for seed in range(20):  # N identical-skill trials: the IS winner is a coin toss OOS
        r = np.random.default_rng(seed).standard_normal((320, 10)) * 0.01
        values.append(probability_of_backtest_overfitting(r, blocks=8)["value"])
    assert abs(np.mean(values) - 0.5) < 0.08
    r = rng.standard_normal((320, 10)) * 0.01
    r[:, 3] += 0.004  # one trial with a real edge (daily Sharpe 0.4)
    skilled = probability_of_backtest_overfitting(r, blocks=8)
    assert skilled["value"] < 0.05 and skilled["probability_oos_loss"] < 0.05


def test_too_small_matrices_are_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match=">= 2 trials"):
        probability_of_backtest_overfitting(np.zeros((40, 1)))
    with pytest.raises(ValueError, match="even"):
        probability_of_backtest_overfitting(np.zeros((40, 3)), blocks=5)
    with pytest.raises(ValueError, match="too few for 16 blocks"):
        probability_of_backtest_overfitting(np.zeros((20, 3)), blocks=16)


def test_effective_trials_from_the_mean_correlation() -> None:
    rng = np.random.default_rng(1)
    common = rng.standard_normal((500, 1))
    independent = rng.standard_normal((500, 6))
    assert effective_trials(independent)["n_effective"] == pytest.approx(6, abs=0.3)
    clones = np.hstack([common] * 6) + 1e-9 * rng.standard_normal((500, 6))
    assert effective_trials(clones)["n_effective"] == pytest.approx(1.0, abs=1e-3)
    mixed = 0.6 * common + 0.8 * independent  # pairwise correlation 0.36
    got = effective_trials(mixed)
    assert got["mean_correlation"] == pytest.approx(0.36, abs=0.05)
    assert got["n_effective"] == pytest.approx(got["mean_correlation"]
                                               + (1 - got["mean_correlation"]) * 6)
