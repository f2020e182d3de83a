"""The ATFT-GAT losses: the training loss (searched weights) and the fixed scoring loss."""

from __future__ import annotations

import numpy as np
import torch

from losses import rank_preserving_loss, spearman_loss
from trainers.atft_gat.batch import Batch
from trainers.atft_gat.config import TrainConfig
from trainers.atft_gat.model import pinball_loss


def per_date(values: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """(N, ...) node values -> (G, max_n, ...) per-date rows padded with NaN."""
    n_groups = int(group.max()) + 1 if len(group) else 0
    counts = torch.bincount(group, minlength=n_groups)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(len(group), device=group.device) - starts[group]
    out = values.new_full((n_groups, int(counts.max()) if n_groups else 0, *values.shape[1:]),
                          float("nan"))
    out[group, pos] = values
    return out


def scoring_loss(out: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
    """The ``val_loss`` objective: Huber (delta 1) on per-date z-scored targets, all horizons.

    Deliberately independent of the searched loss weights (rank_weight, ic_weight, ...), so
    that val_loss compares trials with each other; the training loss does not.
    """
    point = per_date(out["point"].float(), batch.group)  # (G, n, H)
    target = per_date(batch.y, batch.group)
    valid = torch.isfinite(target)
    err = torch.nn.functional.huber_loss(torch.where(valid, point, 0.0),
                                         torch.where(valid, target, 0.0), reduction="none",
                                         delta=1.0)
    per_date_loss = (err * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1)  # (G, H)
    has = valid.any(dim=1)
    return per_date_loss[has].mean()


def batch_loss(out: dict[str, torch.Tensor], batch: Batch, config: TrainConfig
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """The per-date training loss of one batch (step 4 of the recipe, ``train.py``)."""
    point = per_date(out["point"].float(), batch.group)  # (G, n, H)
    target = per_date(batch.y, batch.group)  # (G, n, H)
    total = point.new_zeros(())
    parts = {"base": 0.0, "rank": 0.0, "ic": 0.0}
    n_h = point.shape[-1]
    for h in range(n_h):
        loss_h, parts_h = rank_preserving_loss(
            point[..., h], target[..., h], mask=torch.isfinite(target[..., h]),
            rank_weight=config.rank_weight, ic_weight=config.ic_weight, base=config.base_loss,
            huber_delta=config.huber_delta, strength=config.rank_strength)
        total = total + loss_h / n_h
        for k in parts:
            parts[k] += float(parts_h[k]) / n_h
    if config.quantile_weight > 0:
        q = pinball_loss(out["quantiles"].float(), batch.y, config.quantiles)
        total = total + config.quantile_weight * q
    if config.turnover_weight > 0:
        h = list(config.horizons).index(config.metric_horizon)
        penalty = turnover_penalty(out["point"][:, h].float(), batch,
                                   strength=config.rank_strength)
        if penalty is not None:
            total = total + config.turnover_weight * penalty
            parts["turnover"] = float(penalty.detach())
    return total, parts


def turnover_penalty(score: torch.Tensor, batch: Batch, *, strength: float
                     ) -> torch.Tensor | None:
    """``1 - soft Spearman`` of the scores of the stocks two consecutive dates of the batch
    share, averaged over those pairs of dates (None when the batch holds no such pair).

    A book's turnover comes from stocks changing rank between rebalances; this term, the
    ``turnover_weight`` of the loss, pulls each date's ranking towards the next one's. Both
    dates get a gradient: the soft ranks of one against the hard ranks of the other, each way.
    ``score``: (N,) the scored horizon's predictions, rows as ``batch``'s.
    """
    dates = np.asarray(batch.date)
    group = batch.group.cpu().numpy()
    stock = batch.stock.cpu().numpy()
    terms = []
    for g in np.flatnonzero(np.diff(dates) == 1):  # slot g and g + 1 are consecutive dates
        rows_a, rows_b = np.flatnonzero(group == g), np.flatnonzero(group == g + 1)
        _, ia, ib = np.intersect1d(stock[rows_a], stock[rows_b], return_indices=True)
        if len(ia) < 3:
            continue
        a = score[torch.as_tensor(rows_a[ia], device=score.device)]
        b = score[torch.as_tensor(rows_b[ib], device=score.device)]
        terms.append(0.5 * (spearman_loss(b, a.detach(), strength=strength)
                            + spearman_loss(a, b.detach(), strength=strength)))
    if not terms:
        return None
    return torch.stack(terms).mean()
