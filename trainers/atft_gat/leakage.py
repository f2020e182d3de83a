"""The leakage guard: a feature that ranks stocks like the label it should predict is refused.

A real daily equity feature reaches a rank correlation of a few hundredths with the next
day's returns (the seeds' best single features: 0.01-0.03); a forward return fed as a feature by
mistake (``ret_5d`` against ``ret_1d``: 0.44) is an order of magnitude above. So before training,
every feature's mean per-date RankIC with the scored target is measured on the *training* dates
(nothing later is read), and one at or above ``leak_threshold`` stops the trial with a line
naming it, unless the study lists it in ``allow_features``.

Cost: ranks of (dates, stocks, features) blocks on an even sample of at most
``GUARD_DATES`` training dates, vectorised in torch; the scores are saved as a sidecar of the
feature cache, so the trials of a study after the first read them back.
"""

from __future__ import annotations

import numpy as np
import torch

from trainers.errors import UserError

# Training dates sampled (evenly) for the guard: the mean of 128 per-date RankICs of 4,000
# stocks has a standard error near 0.0014, far below any threshold worth setting.
GUARD_DATES = 128
# Dates ranked per pass: bounds the (dates, stocks, features) temporaries to ~100 MB at a
# 4,000 x 300 panel.
BLOCK_DATES = 8
SIDECAR = "feature_rank_ic"


def _ranks(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Ordinal ranks 0..n-1 of the valid entries along dim 1 (invalid ones sort last)."""
    keyed = torch.where(valid, values, torch.inf)
    order = keyed.argsort(dim=1)
    ranks = torch.empty_like(order)
    positions = torch.arange(values.shape[1]).view(1, -1, *([1] * (values.dim() - 2)))
    ranks.scatter_(1, order, positions.expand_as(order))
    return ranks.to(torch.float64)


def feature_rank_ic(x: torch.Tensor, y: torch.Tensor, present: torch.Tensor,
                    *, min_stocks: int = 5) -> np.ndarray:
    """Mean over dates of each feature's Spearman correlation with the target.

    x: (B, S, F) raw features (NaN = missing); y: (B, S) target; present: (B, S). A date and
    feature pair counts where at least ``min_stocks`` stocks have both values. Ties take
    ordinal ranks (enough for a guard). Returns (F,) float64, NaN for a feature with no
    countable date.
    """
    ok_y = present & torch.isfinite(y)  # (B, S)
    valid = ok_y.unsqueeze(-1) & torch.isfinite(x)  # (B, S, F)
    rx = _ranks(x, valid)
    ry = _ranks(y, ok_y).unsqueeze(-1)  # (B, S, 1), ranks among the stocks with a target
    m = valid.to(torch.float64)
    n = m.sum(dim=1)  # (B, F)
    mean_x = (rx * m).sum(dim=1) / n.clamp(min=1)
    mean_y = (ry * m).sum(dim=1) / n.clamp(min=1)
    dx = (rx - mean_x.unsqueeze(1)) * m
    dy = (ry - mean_y.unsqueeze(1)) * m
    cov = (dx * dy).sum(dim=1)
    denom = (dx.square().sum(dim=1) * dy.square().sum(dim=1)).sqrt()
    ic = torch.where((n >= min_stocks) & (denom > 0), cov / denom.clamp(min=1e-300),
                     torch.nan)  # (B, F)
    counted = torch.isfinite(ic)
    total = torch.where(counted, ic, 0.0).sum(dim=0)
    k = counted.sum(dim=0)
    return torch.where(k > 0, total / k.clamp(min=1), torch.nan).numpy()


def guard_dates(train_dates: np.ndarray) -> np.ndarray:
    """An even sample of at most GUARD_DATES of the training dates (all when fewer)."""
    train_dates = np.asarray(train_dates, dtype=np.int64)
    if len(train_dates) <= GUARD_DATES:
        return train_dates
    pick = np.linspace(0, len(train_dates) - 1, GUARD_DATES).round().astype(np.int64)
    return train_dates[np.unique(pick)]


def panel_rank_ic(x: torch.Tensor, y: torch.Tensor, present: torch.Tensor,
                  dates: np.ndarray) -> np.ndarray:
    """feature_rank_ic over ``dates`` of a (D, S, F) / (D, S) / (D, S) panel, in blocks."""
    sums = None
    counts = None
    for i in range(0, len(dates), BLOCK_DATES):
        idx = torch.as_tensor(dates[i:i + BLOCK_DATES])
        block = torch.as_tensor(feature_rank_ic(x[idx], y[idx], present[idx]))
        weight = torch.isfinite(block).to(torch.float64) * len(idx)
        block = torch.where(torch.isfinite(block), block, 0.0) * weight
        sums = block if sums is None else sums + block
        counts = weight if counts is None else counts + weight
    if sums is None:
        return np.zeros(x.shape[2])
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.nan).numpy()


def check_features(scores: dict[str, float], *, target: str, threshold: float,
                   allow: tuple[str, ...]) -> None:
    """UserError naming every feature whose |RankIC| reaches ``threshold`` and is not allowed
    (and every name in ``allow`` that is not a feature: a typo there would switch nothing
    off)."""
    unknown = [name for name in allow if name not in scores]
    if unknown:
        raise UserError(f"allow_features lists {', '.join(unknown)}, which is not a feature "
                        f"of the panel; features: {', '.join(scores)}")
    leaks = sorted(((name, s) for name, s in scores.items()
                    if np.isfinite(s) and abs(s) >= threshold and name not in allow),
                   key=lambda item: -abs(item[1]))
    if leaks:
        listed = ", ".join(f"{name} (RankIC {s:+.3f})" for name, s in leaks)
        raise UserError(
            f"feature(s) {listed} rank stocks like the target {target} on the training dates "
            f"(|RankIC| >= leak_threshold {threshold}); a real feature scores far below, so "
            "this looks like a forward return or a label: drop it, or list it in "
            "allow_features if it is truly known at the close of each date")
