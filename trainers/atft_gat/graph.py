"""Per-date stock graphs from trailing return correlations (the "GAT" part's input).

For date t, stock i gets an edge from each of its ``k`` most correlated other stocks j, among
those with correlation >= ``threshold``, where the correlation is measured on the returns of
the ``window`` dates strictly before t (rows ``[t - window, t - 1]`` of ``returns``). Nothing
from date t or later is used, so the graph of a validation date never sees its own labels.

Choices:

* Direction: an edge ``src=j -> dst=i`` means "i listens to j"; every stock has at most ``k``
  in-edges (its own top-k), and the graph is **not symmetrised**: j may be among i's top-k
  without i being among j's. This bounds the in-degree, and so the attention cost per node, by
  k. Symmetrising would add the reverse edges and make hub stocks' degree unbounded.
* No self-loops; a model that wants a node's own state adds it itself.
* A stock is left without edges (in or out) on date t when it has fewer than ``min_periods``
  finite returns in the window, a constant return over the window, or is absent on date t
  (``present``). A pair needs ``min_periods`` dates on which both returned.
* Missing returns: each stock is centred and scaled on its own finite returns in the window,
  and the correlation of a pair is the mean product over the dates both have, i.e.
  ``sum_overlap(z_i z_j) / n_overlap``. With no missing returns in the window this is the
  exact Pearson correlation; with gaps it approximates the pairwise-complete one (and is
  clipped to [-1, 1]) at the cost of two matmuls instead of four.
* Edge weight = that correlation (float32); within a date, edges are ordered by ``dst`` then
  by decreasing weight (the order of exactly equal weights is unspecified).

Cost: one batched (S x W) @ (W x S) matmul per date plus a top-k, in chunks of dates sized to
a memory budget, on any torch device. 500 stocks x 750 dates take about 1.5 s on two idle CPU
cores, most of it in the top-k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainers.errors import UserError

# Peak bytes of the (dates, S, S) correlation block per chunk; bounds memory at large S.
CHUNK_BYTES = 256 * 2**20


@dataclass(frozen=True)
class GraphConfig:
    """Settings of the correlation graph.

    Attributes:
        window: trailing dates whose returns measure a correlation.
        k: most correlated neighbours kept per stock (its in-degree bound).
        threshold: minimum correlation of an edge.
        min_periods: minimum finite returns per stock, and common dates per pair, in the
            window; capped at ``window`` (so a short window needs no matching min_periods).
    """

    window: int = 60
    k: int = 10
    threshold: float = 0.3
    min_periods: int = 20

    @property
    def required_periods(self) -> int:
        """min_periods capped at the window."""
        return min(self.min_periods, self.window)

    def __post_init__(self) -> None:
        problems = []
        if self.window < 2:
            problems.append(f"graph window must be >= 2 dates, got {self.window}")
        if self.k < 1:
            problems.append(f"graph k must be >= 1, got {self.k}")
        if not -1.0 <= self.threshold <= 1.0:
            problems.append(f"graph threshold must be in [-1, 1], got {self.threshold}")
        if self.min_periods < 2:
            problems.append(f"graph min_periods must be >= 2, got {self.min_periods}")
        if problems:
            raise UserError("; ".join(problems))


@dataclass(frozen=True)
class DateGraphs:
    """Edges of every date in one CSR-like layout over dates.

    The edges of date d are ``src/dst/weight[offsets[d]:offsets[d + 1]]``; node ids are stock
    (code) indices ``0..S-1`` (columns of the return matrix), the same on every date. Plain
    arrays only, so the graphs can be saved and reloaded as an ``.npz`` as they are.
    """

    src: np.ndarray  # (E,) int32 neighbour j
    dst: np.ndarray  # (E,) int32 stock i that listens
    weight: np.ndarray  # (E,) float32 correlation
    offsets: np.ndarray  # (D + 1,) int64

    @property
    def n_dates(self) -> int:
        return len(self.offsets) - 1

    def edges(self, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(src, dst, weight) of date ``d``, as views into the shared arrays."""
        if not -self.n_dates <= d < self.n_dates:
            raise IndexError(f"date index {d} out of range for {self.n_dates} dates")
        d %= self.n_dates
        lo, hi = int(self.offsets[d]), int(self.offsets[d + 1])
        return self.src[lo:hi], self.dst[lo:hi], self.weight[lo:hi]


def _chunk_graphs(
    padded: torch.Tensor, present: torch.Tensor, d0: int, d1: int, cfg: GraphConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Edges of dates [d0, d1) as (date, src, dst, weight); ``padded`` has ``window`` NaN rows
    in front, so date t's window is ``padded[t : t + window]``."""
    w = cfg.window
    x = padded[d0 : d1 + w - 1].unfold(0, w, 1)  # (n, S, W): x[t - d0] = returns[t-w : t]
    finite = torch.isfinite(x)
    count = finite.sum(-1)  # (n, S)
    x0 = torch.where(finite, x, 0.0)
    mean = x0.sum(-1) / count.clamp(min=1)
    xc = torch.where(finite, x - mean.unsqueeze(-1), 0.0)
    std = (xc.square().sum(-1) / count.clamp(min=1)).sqrt()  # (n, S)
    node_ok = (count >= cfg.required_periods) & (std > 0) & present[d0:d1]  # (n, S)
    has_gaps = bool((~finite).any())
    # Without gaps, fold the 1/W of the mean product into z so the (S, S) block needs no pass.
    scale = std * (1.0 if has_gaps else w**0.5)
    z = torch.where(node_ok.unsqueeze(-1), xc / scale.clamp(min=1e-30).unsqueeze(-1), 0.0)

    # Passes over the (n, S, S) block dominate the cost, so keep them few and in place.
    corr = z @ z.transpose(1, 2)  # (n, S, S) mean product of z_i z_j over the window
    if has_gaps:
        m = finite.to(z.dtype)
        overlap = m @ m.transpose(1, 2)  # (n, S, S) dates both stocks returned
        corr.div_(overlap.clamp_(min=1)).clamp_(-1.0, 1.0)
        corr.masked_fill_(overlap < cfg.required_periods, float("-inf"))
        del overlap
    corr.masked_fill_(~node_ok.unsqueeze(1), float("-inf"))  # unusable neighbours j
    corr.diagonal(dim1=1, dim2=2).fill_(float("-inf"))  # no self-loops
    k = min(cfg.k, x.shape[1] - 1)
    values, neighbour = torch.topk(corr, k, dim=-1, sorted=True)  # (n, S, k), decreasing
    # Unusable listeners i and weak links are dropped on the small (n, S, k) result.
    keep = (values >= cfg.threshold) & node_ok.unsqueeze(-1)
    date, dst, slot = keep.nonzero(as_tuple=True)  # row-major: by date, then dst, then rank
    src = neighbour[date, dst, slot]
    weight = values[date, dst, slot].clamp(max=1.0)
    return date + d0, src, dst, weight


def build_graphs(
    returns: np.ndarray,
    cfg: GraphConfig,
    *,
    present: np.ndarray | None = None,
    device: str | torch.device = "cpu",
) -> DateGraphs:
    """Correlation graphs of every date of a (dates, stocks) return matrix.

    Args:
        returns: (D, S) float; row t holds returns realised by date t (e.g. ``f_ret_1d_past``,
            the return from t-1 to t); NaN = missing. Date t's graph reads rows < t only.
        present: optional (D, S) bool; a stock absent on date t gets no edges that date.
            Absence is known at t, so it does not break the no-look-ahead rule.
        device: where the matmuls run; the result is always numpy on the CPU.
    """
    returns = np.asarray(returns)
    if returns.ndim != 2:
        raise ValueError(f"returns must be (dates, stocks), got shape {returns.shape}")
    n_dates, n_stocks = returns.shape
    if present is None:
        present = np.ones((n_dates, n_stocks), dtype=bool)
    if np.shape(present) != returns.shape:
        raise ValueError(
            f"present must have the shape of returns {returns.shape}, got {np.shape(present)}"
        )
    device = torch.device(device)
    w = cfg.window
    padded = torch.full((n_dates + w, n_stocks), float("nan"), dtype=torch.float32)
    padded[w:] = torch.from_numpy(np.array(returns, dtype=np.float32))
    padded = padded.to(device)
    present_t = torch.as_tensor(np.asarray(present, dtype=bool)).to(device)

    # Each date of a chunk holds a few (S, S) float32 blocks at once.
    chunk = max(1, CHUNK_BYTES // (4 * 4 * max(n_stocks, 1) ** 2))
    parts = []
    with torch.no_grad():
        for d0 in range(0, n_dates, chunk):
            d1 = min(n_dates, d0 + chunk)
            parts.append([p.cpu() for p in _chunk_graphs(padded, present_t, d0, d1, cfg)])
    if parts and n_stocks > 1:
        date, src, dst, weight = (torch.cat(column) for column in zip(*parts, strict=True))
    else:
        date = src = dst = torch.zeros(0, dtype=torch.int64)
        weight = torch.zeros(0, dtype=torch.float32)
    counts = np.bincount(date.numpy(), minlength=n_dates)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return DateGraphs(
        src=src.numpy().astype(np.int32),
        dst=dst.numpy().astype(np.int32),
        weight=weight.numpy().astype(np.float32),
        offsets=offsets,
    )
