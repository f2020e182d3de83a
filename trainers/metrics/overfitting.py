"""How much of a search's best result is selection luck, from the trials' return series.

Both functions take a (T, N) matrix of per-period returns: one column per trial, the rows the
dates all trials were scored on (NaN where a trial has no return that date).

* :func:`effective_trials`: the number of effectively independent trials, for the deflated
  Sharpe ratio. HPO trials are correlated (neighbouring configurations rank stocks alike), so
  the number of trials run over-deflates. With ``rho`` the mean pairwise correlation of the
  trials' returns, ``N_eff = rho + (1 - rho) N`` (Lopez de Prado and Lewis 2019, "Detection of
  false investment strategies using unsupervised learning methods", section 3): N for
  uncorrelated trials, 1 for identical ones; ``rho`` is clipped to [0, 1].
* :func:`probability_of_backtest_overfitting`: PBO by combinatorially symmetric
  cross-validation (Bailey, Borwein, Lopez de Prado and Zhu 2015, "The probability of
  backtest overfitting"). The rows are cut into ``blocks`` (S, even) contiguous blocks of equal
  length (the last T mod S rows dropped); for each of the C(S, S/2) ways to pick half of the
  blocks as in-sample (IS) and the rest as out-of-sample (OOS), the trial with the best IS
  Sharpe ratio is found and its OOS Sharpe ratio ranked among all trials' OOS ones: relative
  rank ``w = rank / (N + 1)`` (rank 1 = worst), logit ``log(w / (1 - w))``. PBO is the share of
  splits whose logit is <= 0: the IS-best trial lands at or below the OOS median. 0.5 is what
  pure luck gives (N trials with the same skill); near 0 says the best IS trial stays good
  OOS. Beside it: the slope of a least-squares fit of OOS on IS Sharpe of the IS-best trial
  (performance degradation; negative when the IS winner is mostly lucky) and the probability
  of an OOS loss (share of splits whose IS-best trial has an OOS Sharpe below 0).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

DEFAULT_PBO_BLOCKS = 16  # C(16, 8) = 12,870 splits: the paper's example
MIN_ROWS_PER_BLOCK = 2  # a block's Sharpe contribution needs a spread


def effective_trials(returns: np.ndarray) -> dict[str, Any]:
    """``{"n", "mean_correlation", "n_effective"}`` of a (T, N) matrix (module docstring).
    Correlations use the rows where both trials have a return; a pair with fewer than 3 such
    rows, or a constant series, is left out of the mean."""
    r = np.asarray(returns, dtype=np.float64)
    n = r.shape[1]
    if n < 2:
        return {"n": n, "mean_correlation": None, "n_effective": float(n)}
    corrs = []
    for i in range(n):
        for j in range(i + 1, n):
            ok = np.isfinite(r[:, i]) & np.isfinite(r[:, j])
            if ok.sum() < 3:
                continue
            a, b = r[ok, i], r[ok, j]
            if a.std() == 0 or b.std() == 0:
                continue
            corrs.append(float(np.corrcoef(a, b)[0, 1]))
    if not corrs:
        return {"n": n, "mean_correlation": None, "n_effective": float(n)}
    rho = float(np.mean(corrs))
    clipped = min(1.0, max(0.0, rho))
    return {"n": n, "mean_correlation": rho, "n_effective": clipped + (1.0 - clipped) * n}


def _block_moments(r: np.ndarray, blocks: int) -> tuple[np.ndarray, ...]:
    """Per block and trial: count, sum and sum of squares of the finite returns (S, N)."""
    t = (len(r) // blocks) * blocks
    cut = r[:t].reshape(blocks, t // blocks, r.shape[1])  # (S, T/S, N)
    finite = np.isfinite(cut)
    z = np.where(finite, cut, 0.0)
    return finite.sum(1).astype(np.float64), z.sum(1), np.square(z).sum(1)


def _sharpe(count: np.ndarray, total: np.ndarray, squares: np.ndarray) -> np.ndarray:
    """Per-period Sharpe ratio (mean / std, ddof 1) from counts and sums; NaN if undefined."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        var = (squares - count * mean**2) / (count - 1)
        out = mean / np.sqrt(var)
    out[~(var > 0) | (count < 2)] = np.nan
    return out


def probability_of_backtest_overfitting(returns: np.ndarray, *,
                                        blocks: int = DEFAULT_PBO_BLOCKS) -> dict[str, Any]:
    """PBO of a (T, N) return matrix by CSCV with ``blocks`` blocks (module docstring).

    Returns ``{"value", "blocks", "trials", "splits", "rows_per_block",
    "degradation_slope", "probability_oos_loss", "logits"}`` (``logits``: one per split, in the
    order of ``itertools.combinations``). Raises ``ValueError`` when the matrix is too small:
    fewer than 2 trials, an odd or < 2 ``blocks``, or fewer than ``MIN_ROWS_PER_BLOCK`` rows a
    block.
    """
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 2 or r.shape[1] < 2:
        raise ValueError(f"PBO needs a (dates, trials) matrix with >= 2 trials; got {r.shape}")
    if blocks < 2 or blocks % 2:
        raise ValueError(f"blocks must be even and >= 2; got {blocks}")
    if len(r) // blocks < MIN_ROWS_PER_BLOCK:
        raise ValueError(f"{len(r)} dates are too few for {blocks} blocks of at least "
                         f"{MIN_ROWS_PER_BLOCK} dates")
    n = r.shape[1]
    count, total, squares = _block_moments(r, blocks)
    splits = np.array(list(itertools.combinations(range(blocks), blocks // 2)))
    ins = np.zeros((len(splits), blocks))
    ins[np.arange(len(splits))[:, None], splits] = 1.0  # (K, S) 1 = in-sample block
    outs = 1.0 - ins
    is_sr = _sharpe(ins @ count, ins @ total, ins @ squares)  # (K, N)
    oos_sr = _sharpe(outs @ count, outs @ total, outs @ squares)
    best = np.argmax(np.where(np.isfinite(is_sr), is_sr, -np.inf), axis=1)  # (K,)
    rows = np.arange(len(splits))
    best_oos = oos_sr[rows, best]
    # rank 1 = worst OOS; a trial without an OOS Sharpe ranks below every other one
    filled = np.where(np.isfinite(oos_sr), oos_sr, -np.inf)
    rank = (filled < filled[rows, best][:, None]).sum(1) + 1
    w = rank / (n + 1.0)
    logits = np.log(w / (1.0 - w))
    best_is = is_sr[rows, best]
    ok = np.isfinite(best_is) & np.isfinite(best_oos)
    slope = (float(np.polyfit(best_is[ok], best_oos[ok], 1)[0])
             if ok.sum() >= 2 and np.ptp(best_is[ok]) > 0 else math.nan)
    return {"value": float(np.mean(logits <= 0.0)), "blocks": blocks, "trials": n,
            "splits": len(splits), "rows_per_block": len(r) // blocks,
            "degradation_slope": slope,
            "probability_oos_loss": float(np.mean(best_oos[ok] < 0.0)) if ok.any() else math.nan,
            "logits": logits.tolist()}
