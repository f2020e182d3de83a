"""Differentiable Spearman loss for cross-sectional ranking (one row = one date's stocks).

``soft_rank`` is Blondel et al. (2020), "Fast Differentiable Sorting and Ranking": the soft ranks
are the Euclidean projection of the (scaled) scores onto the permutahedron of ``(1, ..., n)``,
computed with one sort and one pool-adjacent-violators pass: O(n log n) time, O(n) memory, and an
exact O(n) backward pass (block averaging). See ``losses/_permutahedron.py`` for the algebra.

Strength convention
-------------------
By default (``normalize=True``) each row is first standardised over its valid entries and scaled
to the spread of the ranks themselves::

    z = (x - mean(x)) / std(x) * sigma_n / strength,    sigma_n = sqrt((n^2 - 1) / 12)

(``sigma_n`` is the standard deviation of ``1..n``) and then projected. So ``strength`` is
Blondel's regularisation ``epsilon`` in units of "one rank per standard deviation of the row":

- it does not depend on the scale or offset of the predictions (``soft_rank(a*x + b) ==
  soft_rank(x)`` for ``a > 0``) nor, to first order, on the number of stocks;
- ``strength -> 0`` gives the hard ranks (ties averaged, as ``scipy.stats.rankdata``) as soon as
  every gap between distinct values exceeds ``strength / sigma_n`` standard deviations (the tests
  use ``1e-6`` on rows of up to 1,000 values), up to float64 rounding of the scaled scores;
- ``strength -> inf`` pools the whole row into one block, where the soft ranks are an affine
  function of ``x``: the soft Spearman then tends to the Pearson correlation between the
  predictions and the target's ranks.

In between, runs of stocks whose scaled scores sit closer together than one rank unit apart are
pooled: inside a pool the soft ranks move with the scores (non-zero gradient), between pools they
are the hard ranks. ``DEFAULT_STRENGTH`` (1.0) is the threshold at which a row spread like its own
ranks still pools; see the comment on it for the measurements behind it.

With ``normalize=False`` the input is used as is: ``z = x / strength`` (Blondel's and torchsort's
``regularization_strength``).

Degenerate rows (documented policy, each covered by a test)
-----------------------------------------------------------
- Entries are used where ``mask`` is True *and* the target is finite; NaN/inf targets are dropped.
- A row counts in the mean only if it has at least ``min_valid`` (>= 2) used entries and its
  target is not constant (all tied): otherwise it carries no ranking information and is left out.
- A constant prediction row (all used predictions equal) has correlation 0 (loss 1) and a zero
  gradient: a correlation has no derivative there.
- If no row counts, the loss is 0 with a zero gradient.
- A NaN/inf *prediction* at a used entry is a model bug, not missing data: the loss is NaN.
- Invalid entries of ``soft_rank`` (``mask`` False) are 0 and get a zero gradient.

The projection runs on the host in float64 (numpy + scipy's C++ PAV); for CUDA tensors that is one
device-to-host and one host-to-device copy of an (rows, n) array each way, forward and backward.
Results come back on the input's device and in its dtype.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from losses import _permutahedron, _soft_spearman

# Blondel's epsilon in rank units per row standard deviation (see the module docstring). 1.0 is
# the pooling threshold of a row spread like its own ranks (uniform): adjacent gaps are then one
# rank unit. Below it such a row falls apart into singleton blocks and its ranking gradient
# vanishes (plain SGD on 4 x 1,000 stalled at Spearman 0.23 with 0.5 and reached 0.92 with 1.0);
# above it the loss drifts toward Pearson(pred, rank(target)): soft minus hard Spearman measured
# ~0.003 on Gaussian predictions and ~0.015 on Student-t(3) ones at 1.0, ~0.05 at 2.0.
DEFAULT_STRENGTH = 1.0

# A correlation needs two points; callers may ask for more (e.g. "at least 20 stocks per date").
MIN_VALID = 2

# Default weight of the Spearman term in ``rank_preserving_loss``; the production study tunes it.
DEFAULT_RANK_WEIGHT = 0.1

# torch's Huber default: quadratic within one unit of error, linear beyond.
DEFAULT_HUBER_DELTA = 1.0


class _SoftRank(torch.autograd.Function):
    """Permutahedron projection of the rows of ``z`` (rows, n) among their ``valid`` entries."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        z64 = z.detach().to(device="cpu", dtype=torch.float64).numpy()
        valid_np = None if valid is None else valid.detach().cpu().numpy()
        out, ctx.state = _permutahedron.project(z64, valid_np)
        return torch.from_numpy(out).to(device=z.device, dtype=z.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        g64 = grad.detach().to(device="cpu", dtype=torch.float64).numpy()
        gz = _permutahedron.project_backward(g64, ctx.state)
        return torch.from_numpy(gz).to(device=grad.device, dtype=grad.dtype), None


# --------------------------------------------------------------------------- argument checks


def _check_strength(strength: float) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise TypeError(f"strength must be a positive number, got {strength!r}")
    if not (math.isfinite(strength) and strength > 0):
        raise ValueError(f"strength must be a positive finite number, got {strength!r}")
    return float(strength)


def _check_weight(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number >= 0, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_min_valid(min_valid: int) -> int:
    if isinstance(min_valid, bool) or not isinstance(min_valid, int) or min_valid < MIN_VALID:
        raise ValueError(f"min_valid must be an integer >= {MIN_VALID}, got {min_valid!r}")
    return min_valid


def _check_mask(mask: torch.Tensor | None, like: torch.Tensor) -> None:
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a bool tensor (True = use the entry), got {got}")
    if mask.shape != like.shape:
        raise ValueError(
            f"mask must have the shape of the scores {tuple(like.shape)}, got {tuple(mask.shape)}"
        )
    if mask.device != like.device:
        raise ValueError(f"mask is on {mask.device} but the scores are on {like.device}")


def _as_rows(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Checks (dates, stocks) or (stocks,) inputs -> 2-D pred, target (work dtype), mask."""
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not pred.is_floating_point():
        raise TypeError(f"pred must be a floating-point tensor, got {pred.dtype}")
    if pred.dim() not in (1, 2):
        raise ValueError(
            f"pred must be (dates, stocks) or (stocks,), got shape {tuple(pred.shape)}"
        )
    if target.shape != pred.shape:
        raise ValueError(
            f"target must have the shape of pred {tuple(pred.shape)}, got {tuple(target.shape)}"
        )
    if target.device != pred.device:
        raise ValueError(f"target is on {target.device} but pred is on {pred.device}")
    _check_mask(mask, pred)
    work = _work_dtype(pred.dtype)
    if pred.dim() == 1:  # one date
        pred, target = pred.unsqueeze(0), target.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
    return pred.to(work), target.detach().to(work), mask


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 at least: half-precision sums over thousands of stocks are too coarse."""
    return torch.promote_types(dtype, torch.float32)


# --------------------------------------------------------------------------- row statistics


def _centre(
    x: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row over valid entries: centred values (0 elsewhere), variance, "is constant".

    The row is first shifted by one of its own (detached) valid values. That leaves the result
    unchanged in exact arithmetic but makes a constant row centre to exactly 0, so "constant" is
    an exact test (variance == 0) instead of a tolerance on rounding noise.
    """
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)  # 0 for an empty row: unused
    shifted = torch.where(valid, x - x.detach().gather(1, first), 0.0)
    n = counts.clamp_min(1).to(x.dtype)
    mean = shifted.sum(dim=1, keepdim=True) / n[:, None]
    centred = torch.where(valid, shifted - mean, 0.0)
    var = (centred * centred).sum(dim=1) / n
    return centred, var, var == 0


def _scale_for_rank(
    centred: torch.Tensor,
    var: torch.Tensor,
    const: torch.Tensor,
    counts: torch.Tensor,
    strength: float,
) -> torch.Tensor:
    """z = centred / std * sigma_n / strength; constant rows -> 0 (ties: equal ranks)."""
    n = counts.to(centred.dtype)
    sigma_n = torch.sqrt((n * n - 1).clamp_min(0) / 12.0)
    inv_std = torch.rsqrt(torch.where(const, 1.0, var))
    scale = torch.where(const, 0.0, inv_std * sigma_n / strength)
    return centred * scale[:, None]


def _correlation(
    a: torch.Tensor,
    b: torch.Tensor,
    var_a: torch.Tensor,
    var_b: torch.Tensor,
    counts: torch.Tensor,
    ok: torch.Tensor,
) -> torch.Tensor:
    """Row correlations of centred ``a``, ``b`` (variances per entry, as ``_centre`` returns).

    0 where not ``ok``; the square roots only ever see positive values, so no NaN or inf
    gradient leaks out of the rows that are left out.
    """
    inv = torch.rsqrt(torch.where(ok, var_a, 1.0)) * torch.rsqrt(torch.where(ok, var_b, 1.0))
    cov = (a * b).sum(dim=1) / counts.clamp_min(1).to(a.dtype)
    return torch.where(ok, cov * inv, 0.0)


def _row_mean(values: torch.Tensor, use: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over rows where ``use``; 0 (zero gradient) if there is none."""
    n = use.sum().clamp_min(1).to(values.dtype)
    return torch.where(use, values, 0.0).sum() / n


class _SoftSpearman(torch.autograd.Function):
    """Per-row soft Spearman correlation (rows,) of ``pred`` (rows, n); see ``_soft_spearman``."""

    @staticmethod
    def forward(ctx, pred, x, valid, q, usable, strength):  # type: ignore[override]
        corr, ctx.state = _soft_spearman.forward(x, valid, q, usable, strength)
        ctx.device, ctx.dtype = pred.device, pred.dtype
        return torch.from_numpy(corr).to(device=pred.device, dtype=pred.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        g64 = grad.detach().cpu().numpy().astype(np.float64, copy=False)
        gx = _soft_spearman.backward(g64, ctx.state)
        if ctx.dtype == torch.float32:  # cast on the host, single-threaded (see _Rows)
            gx = gx.astype(np.float32)
        return torch.from_numpy(gx).to(device=ctx.device, dtype=ctx.dtype), *(None,) * 5


class _Rows:
    """One (pred, target, mask) batch: the per-row pieces the loss terms share.

    The bookkeeping runs on host numpy arrays (single-threaded, no per-op thread-pool wake-ups);
    torch only sees per-row results, plus the used-entry mask on the device for the base and IC
    terms.
    """

    def __init__(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, min_valid: int
    ):
        self.pred, self.target = pred, target
        t_np = target.cpu().numpy()
        valid_np = np.isfinite(t_np)  # NaN/inf targets are dropped
        if mask is not None:
            valid_np &= mask.cpu().numpy()
        self.valid_np = None if valid_np.all() else valid_np
        if self.valid_np is not None:
            t_np = np.where(valid_np, t_np, 0)
        self.target_rank, varies = _permutahedron.hard_rank(t_np, self.valid_np)
        # float64 host copy of the predictions (a view when pred is float64 on the CPU).
        self.x_np = pred.detach().cpu().numpy().astype(np.float64, copy=False)
        counts_np = valid_np.sum(axis=1)
        # A row counts when it has enough entries and its target actually orders them.
        self.usable_np = (counts_np >= min_valid) & varies
        bad = _permutahedron.bad_rows(self.x_np, self.valid_np)
        # A NaN/inf prediction at a used entry must surface (NaN loss), even in a row not counted.
        counted = self.usable_np if bad is None else self.usable_np | bad
        self.counted = torch.from_numpy(counted).to(pred.device)
        self._valid_np_full = valid_np
        self._counts_np = counts_np

    @cached_property
    def valid(self) -> torch.Tensor:
        """Used entries, (rows, n) bool on the device."""
        return torch.from_numpy(self._valid_np_full).to(self.pred.device)

    @cached_property
    def counts(self) -> torch.Tensor:
        """Used entries per row, (rows,) on the device."""
        return torch.from_numpy(self._counts_np).to(self.pred.device)

    def spearman(self, strength: float) -> torch.Tensor:
        """Soft Spearman correlation per row (rows,): 0 where not usable or pred is constant."""
        return _SoftSpearman.apply(
            self.pred, self.x_np, self.valid_np, self.target_rank, self.usable_np, strength
        )

    def pearson(self) -> torch.Tensor:
        """Pearson correlation (IC) per row between predictions and targets (rows,)."""
        valid, counts = self.valid, self.counts
        usable = torch.from_numpy(self.usable_np).to(self.pred.device)
        p, var_p, const_p = _centre(self.pred, valid, counts)
        with torch.no_grad():
            t, var_t, _ = _centre(self.target, valid, counts)
        return _correlation(p, t, var_p, var_t, counts, usable & ~const_p)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of per-row ``values`` over the counted rows; 0 (zero gradient) if none."""
        return _row_mean(values, self.counted)


# --------------------------------------------------------------------------- public API


def soft_rank(
    x: torch.Tensor,
    *,
    strength: float = DEFAULT_STRENGTH,
    dim: int = -1,
    mask: torch.Tensor | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Differentiable ascending ranks (1 = smallest) of ``x`` along ``dim``.

    Each slice along ``dim`` is ranked among its entries where ``mask`` is True (ranks ``1..k``);
    masked-out entries get 0 and no gradient. ``strength`` and ``normalize`` follow the module
    docstring: with ``normalize`` the result is invariant to the scale and offset of each slice.
    Constant slices get their mean rank ``(k + 1) / 2`` everywhere; a slice with a NaN/inf among
    its used entries gets NaN soft ranks (other slices are unaffected). The sum of each slice's
    soft ranks is always ``k (k + 1) / 2``, like the hard ranks.
    """
    strength = _check_strength(strength)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension to rank along, got a scalar")
    _check_mask(mask, x)
    moved = x.movedim(dim, -1)
    shape = moved.shape
    if moved.numel() == 0:
        return torch.zeros_like(x)
    rows = moved.to(_work_dtype(x.dtype)).reshape(-1, shape[-1])
    if mask is None:
        valid = torch.ones_like(rows, dtype=torch.bool)
    else:
        valid = mask.movedim(dim, -1).reshape(rows.shape)
    counts = valid.sum(dim=1)
    if normalize:
        centred, var, const = _centre(rows, valid, counts)
        z = _scale_for_rank(centred, var, const, counts, strength)
    else:
        z = torch.where(valid, rows, 0.0) / strength
    ranks = _SoftRank.apply(z, None if mask is None else valid)
    return ranks.reshape(shape).movedim(-1, dim).to(x.dtype)


def hard_rank(x: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Ranks along the last dim among entries where ``mask`` is True and ``x`` is finite.

    Ties get their average rank (``scipy.stats.rankdata``'s "average"); unused entries get 0.
    No gradient. Same device and (at least float32) dtype as ``x``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise TypeError("x must be a tensor with at least one dimension")
    _check_mask(mask, x)
    flat = x.detach().reshape(-1, x.shape[-1]) if x.numel() else x.detach().reshape(0, 0)
    if flat.numel() == 0:
        return torch.zeros(x.shape, dtype=_work_dtype(x.dtype), device=x.device)
    valid = torch.isfinite(flat)
    if mask is not None:
        valid = valid & mask.reshape(flat.shape)
    t64 = torch.where(valid, flat.to(torch.float64), 0.0).cpu().numpy()
    ranks, _ = _permutahedron.hard_rank(t64, valid.cpu().numpy())
    out = torch.from_numpy(ranks).to(device=x.device, dtype=_work_dtype(x.dtype))
    return out.reshape(x.shape)


def spearman_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    strength: float = DEFAULT_STRENGTH,
    min_valid: int = MIN_VALID,
) -> torch.Tensor:
    """``1 - soft Spearman(pred, target)`` per date (row), averaged over the rows that count.

    ``pred``/``target``: (dates, stocks) or (stocks,). The predictions get soft ranks, the target
    hard ranks (ties averaged, no gradient). See the module docstring for masks, NaN targets,
    constant rows and rows with too few stocks. Returns a scalar on pred's device and dtype;
    its value lies in [0, 2].
    """
    strength = _check_strength(strength)
    min_valid = _check_min_valid(min_valid)
    pred2, target2, mask2 = _as_rows(pred, target, mask)
    rows = _Rows(pred2, target2, mask2, min_valid)
    return rows.mean(1.0 - rows.spearman(strength)).to(pred.dtype)


def rank_preserving_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    rank_weight: float = DEFAULT_RANK_WEIGHT,
    ic_weight: float = 0.0,
    base: Literal["huber", "mse"] = "huber",
    huber_delta: float = DEFAULT_HUBER_DELTA,
    strength: float = DEFAULT_STRENGTH,
    min_valid: int = MIN_VALID,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``base + rank_weight * (1 - soft Spearman) + ic_weight * (1 - IC)``, each per date.

    - ``base``: Huber (``huber_delta``) or MSE over a date's used entries, then averaged over the
      dates that have at least one (0 if none).
    - rank term: ``spearman_loss`` (same rows, same policy).
    - IC term: 1 - Pearson correlation of pred and target per date, over the same rows as the rank
      term; a constant prediction row has IC 0 and no gradient.

    A term whose weight is 0 is still computed (without autograd) so it can be logged.
    Returns ``(total, {"base": ..., "rank": ..., "ic": ...})``; the parts are detached, unweighted.
    """
    rank_weight = _check_weight("rank_weight", rank_weight)
    ic_weight = _check_weight("ic_weight", ic_weight)
    strength = _check_strength(strength)
    min_valid = _check_min_valid(min_valid)
    if base not in ("huber", "mse"):
        raise ValueError(f"base must be 'huber' or 'mse', got {base!r}")
    if base == "huber":
        huber_delta = _check_weight("huber_delta", huber_delta)
        if huber_delta == 0:
            raise ValueError("huber_delta must be > 0, got 0")
    pred2, target2, mask2 = _as_rows(pred, target, mask)
    rows = _Rows(pred2, target2, mask2, min_valid)

    valid = rows.valid
    p, t = torch.where(valid, pred2, 0.0), torch.where(valid, target2, 0.0)
    if base == "huber":
        err = F.huber_loss(p, t, reduction="none", delta=huber_delta)
    else:
        err = F.mse_loss(p, t, reduction="none")
    counts = valid.sum(dim=1)
    per_date = torch.where(valid, err, 0.0).sum(dim=1) / counts.clamp_min(1).to(err.dtype)
    base_loss = _row_mean(per_date, counts > 0)
    with torch.set_grad_enabled(torch.is_grad_enabled() and rank_weight > 0):
        rank_loss = rows.mean(1.0 - rows.spearman(strength))
    with torch.set_grad_enabled(torch.is_grad_enabled() and ic_weight > 0):
        ic_loss = rows.mean(1.0 - rows.pearson())

    total = base_loss
    if rank_weight > 0:
        total = total + rank_weight * rank_loss
    if ic_weight > 0:
        total = total + ic_weight * ic_loss
    total = total.to(pred.dtype)
    parts = {
        "base": base_loss.detach().to(pred.dtype),
        "rank": rank_loss.detach().to(pred.dtype),
        "ic": ic_loss.detach().to(pred.dtype),
    }
    return total, parts
