"""ATFT-GAT-FAN: a cross-sectional stock-ranking network.

Data flow for the N stocks of one date (or several dates concatenated, with disjoint graphs)::

    x (N, L, F)
      -> FAN: remove each series' top-k frequency components      residual (N, L, F)
                                   (removed part -> MLP -> fan embedding (N, H))
      -> variable selection (TFT GRNs, softmax over features)     (N, L, H)
      -> temporal fusion: LSTM + self-attention, gated skips      last step (N, H)
      -> gated merge of the fan embedding                         (N, H)
      -> graph attention over the correlation graph               (N, H)
      -> heads: point (N, horizons) and monotone quantiles        (N, horizons, quantiles)

FAN, adapted to a return target: forecasting FAN adds the predicted dominant signal back to
the forecast, but we predict returns, not the input series. So an MLP maps the removed
components to an embedding, and a GLU gate merges it into each stock's temporal summary
*before* the graph. Neighbours then attend to a stock's whole state (the level and cycles FAN
took out included), not only to its residual. The merge happens after the backbone, as in
the paper. Details in ``_fan.py``.

Temporal attention: the last step attends over the whole window. Every step in the window is
in the past of the prediction date, so that is what a causal mask gives the last step
(see ``TemporalFusion``).

Every block can be switched off in :class:`ModelConfig`. A switched-off block is not built, so
its parameters do not exist. The replacements: a linear input projection for VSN, the gated
LSTM state for attention, the identity for the graph and for FAN.

Heads: ``point`` is its own linear head, not the median quantile. The ranking loss acts
on point predictions and does not care about their scale, while the pinball loss needs
quantiles in return units; separate heads keep the two losses from fighting over one output.
Quantiles never cross: the lowest is free, each next one adds a softplus (> 0) offset (strictly
increasing unless a softplus of a very negative logit underflows to 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from trainers.atft_gat._fan import FrequencyEmbedding, fan_decompose
from trainers.atft_gat._gat import GraphAttention
from trainers.atft_gat._layers import (
    GateAddNorm,
    GatedResidualNetwork,
    TemporalFusion,
    VariableSelection,
)
from trainers.config import CheckedConfig, Checks, is_int, is_real
from trainers.errors import UserError

__all__ = ["ATFTGATFAN", "ModelConfig", "pinball_loss"]


@dataclass(frozen=True)
class ModelConfig(CheckedConfig):
    """Architecture of :class:`ATFTGATFAN`.

    Lists given for ``horizons``/``quantiles`` (as TOML produces them) are stored as tuples.
    All problems are collected and raised together as one :class:`UserError`.
    """

    hidden_size: int = 64
    lookback: int = 20  # window length L the model sees
    use_vsn: bool = True  # per-feature variable selection with gated residual networks
    # TFT's GRN per feature (memory ~ features x stocks x lookback x hidden) instead of one GRN
    # shared after the selection (memory ~ features x stocks x lookback); see VariableSelection.
    vsn_per_feature_grn: bool = False
    lstm_layers: int = 1
    use_temporal_attention: bool = True
    attn_heads: int = 4  # temporal self-attention heads
    use_graph: bool = True
    gat_layers: int = 2
    gat_heads: int = 4
    gat_dropout: float = 0.1
    # Also feed each stock the correlation-weighted mean of its neighbours' input windows
    # (a fixed, parameter-free propagation step, as in SGC/SIGN), so a signal that lives in the
    # peers' raw features reaches the temporal encoder directly. Part of the graph block.
    graph_features: bool = True
    # Share of edges dropped at random in each training forward pass (0 = none): the graph
    # block cannot lean on any one neighbour, which curbs fitting sector-wide noise.
    edge_dropout: float = 0.0
    use_fan: bool = True
    fan_top_k: int = 3  # dominant frequency components removed/predicted
    dropout: float = 0.1
    # A linear path from the last date's features to every head (ridge's form inside the
    # network, trained with the same loss), zero at initialisation: a lightly trained network
    # starts from the linear ranking instead of having to rediscover it.
    linear_skip: bool = False
    horizons: tuple[int, ...] = (1, 5, 10, 20)
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    grad_checkpointing: bool = False

    def _check(self, checks: Checks) -> None:
        need = checks.need
        for name in ("use_vsn", "vsn_per_feature_grn", "use_temporal_attention", "use_graph",
                     "graph_features", "use_fan", "grad_checkpointing", "linear_skip"):
            need(isinstance(getattr(self, name), bool), name, "must be true or false")
        for name in ("hidden_size", "lstm_layers", "attn_heads", "gat_layers", "gat_heads",
                     "fan_top_k"):
            value = getattr(self, name)
            need(is_int(value) and value >= 1, name, "must be an integer >= 1")
        need(is_int(self.lookback) and self.lookback >= 2, "lookback", "must be an integer >= 2")
        for name in ("dropout", "gat_dropout", "edge_dropout"):
            value = getattr(self, name)
            need(is_real(value) and 0.0 <= value < 1.0, name,
                 "must be a number with 0 <= value < 1")
        hidden_ok = is_int(self.hidden_size) and self.hidden_size >= 1
        for use, heads in (("use_temporal_attention", "attn_heads"), ("use_graph", "gat_heads")):
            n_heads = getattr(self, heads)
            if hidden_ok and getattr(self, use) is True and is_int(n_heads) and n_heads >= 1:
                need(self.hidden_size % n_heads == 0, heads,
                     f"must divide hidden_size={self.hidden_size} "
                     f"(each head gets hidden_size / {heads} channels)")
        if (self.use_fan is True and is_int(self.lookback) and self.lookback >= 2
                and is_int(self.fan_top_k) and self.fan_top_k >= 1):
            n_freq = self.lookback // 2 + 1
            need(self.fan_top_k < n_freq, "fan_top_k",
                 f"must be < lookback//2+1 = {n_freq} (the rFFT of a {self.lookback}-step "
                 f"window has {n_freq} components; removing all of them leaves nothing)")
        h = self.horizons
        need(isinstance(h, tuple) and bool(h) and all(is_int(v) and v >= 1 for v in h)
             and len(set(h)) == len(h),
             "horizons", "must be a non-empty list of distinct integers >= 1, e.g. [1, 5]")
        q = self.quantiles
        need(isinstance(q, tuple) and bool(q) and all(is_real(v) and 0 < v < 1 for v in q)
             and all(a < b for a, b in zip(q, q[1:], strict=False)),
             "quantiles", "must be a non-empty, strictly increasing list of numbers in "
                          "(0, 1), e.g. [0.1, 0.5, 0.9]")


class ATFTGATFAN(nn.Module):
    """The ATFT-GAT-FAN network; see the module docstring for the data flow.

    ``forward`` returns a dict with ``point`` (N, H) and ``quantiles`` (N, H, Q), H = number of
    horizons, Q = number of quantiles, plus ``embedding`` (N, hidden) (the state the heads
    read) and, when the block exists, ``vsn_weights`` (N, F) (selection weights averaged over
    the window; they sum to 1 per node), ``temporal_attn`` (N, attn_heads, L) (the last step's
    attention over the window) and ``graph_attn`` (E, gat_heads) (last GAT layer's edge
    weights).
    """

    def __init__(self, cfg: ModelConfig, *, n_features: int):
        super().__init__()
        if not is_int(n_features) or n_features < 1:
            raise UserError(f"n_features={n_features!r}: must be an integer >= 1")
        self.cfg = cfg
        self.n_features = n_features
        self.propagate = bool(cfg.use_graph and cfg.graph_features)
        # With propagation the encoder sees [own window, neighbours' mean window].
        n_in = 2 * n_features if self.propagate else n_features
        hidden = cfg.hidden_size

        self.fan: FrequencyEmbedding | None = None
        self.fan_gate: GateAddNorm | None = None
        if cfg.use_fan:
            self.fan = FrequencyEmbedding(
                lookback=cfg.lookback,
                n_features=n_in,
                hidden_size=hidden,
                dropout=cfg.dropout,
            )
            # A GLU gate can shut the frequency path off where it does not help.
            self.fan_gate = GateAddNorm(hidden, dropout=cfg.dropout)

        self.vsn: VariableSelection | None = None
        self.input_proj: nn.Linear | None = None
        if cfg.use_vsn:
            self.vsn = VariableSelection(n_in, hidden, dropout=cfg.dropout,
                                         per_feature_grn=cfg.vsn_per_feature_grn)
        else:
            self.input_proj = nn.Linear(n_in, hidden)

        self.temporal = TemporalFusion(
            hidden,
            lstm_layers=cfg.lstm_layers,
            use_attention=cfg.use_temporal_attention,
            attn_heads=cfg.attn_heads,
            dropout=cfg.dropout,
        )

        self.graph: GraphAttention | None = None
        if cfg.use_graph:
            self.graph = GraphAttention(
                hidden, layers=cfg.gat_layers, heads=cfg.gat_heads, dropout=cfg.gat_dropout
            )

        n_h, n_q = len(cfg.horizons), len(cfg.quantiles)
        self.head_grn = GatedResidualNetwork(hidden, hidden, hidden, dropout=cfg.dropout)
        self.point_head = nn.Linear(hidden, n_h)
        self.quantile_head = nn.Linear(hidden, n_h * n_q)
        self.linear: nn.Linear | None = None
        if cfg.linear_skip:
            self.linear = nn.Linear(n_features, n_h)
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor | None = None,
        edge_weight: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """x (N, L, F) must be finite (fill missing features before); L must equal
        ``cfg.lookback``. ``edge_index`` (2, E) holds src -> dst pairs over 0..N-1 and
        ``edge_weight`` (E,) the correlations. Without ``edge_weight`` every edge gets weight 0,
        meaning no correlation information. Without ``edge_index``, or with ``use_graph``
        off, stocks do not interact.
        """
        cfg = self.cfg
        if x.dim() != 3 or x.shape[1] != cfg.lookback or x.shape[2] != self.n_features:
            raise ValueError(
                f"x must have shape (N, lookback={cfg.lookback}, n_features={self.n_features}), "
                f"got {tuple(x.shape)}"
            )
        out: dict[str, Tensor] = {}
        n = x.shape[0]
        last = x[:, -1, :]  # (N, F) the last date's own features, for the linear path
        if (self.training and cfg.edge_dropout > 0 and edge_index is not None
                and edge_index.shape[1] > 0):
            keep = torch.rand(edge_index.shape[1], device=edge_index.device) >= cfg.edge_dropout
            edge_index = edge_index[:, keep]
            edge_weight = edge_weight[keep] if edge_weight is not None else None
        if self.propagate:
            x = torch.cat([x, neighbour_mean(x, edge_index, edge_weight)], dim=-1)  # (N, L, 2F)

        fan_emb: Tensor | None = None
        if self.fan is not None:
            x, dominant = fan_decompose(x, top_k=cfg.fan_top_k)  # backbone sees the residual
            fan_emb = self.fan(dominant)  # (N, hidden)

        if self.vsn is not None:
            h, weights = self.vsn(x)  # (N, L, hidden), (N, L, F)
            out["vsn_weights"] = weights.mean(dim=1)  # (N, F)
        else:
            assert self.input_proj is not None
            h = self.input_proj(x)  # (N, L, hidden)

        if cfg.grad_checkpointing and self.training and torch.is_grad_enabled():
            # Recompute the LSTM/attention activations in backward instead of storing them.
            summary, attn = checkpoint(self.temporal, h, use_reentrant=False)
        else:
            summary, attn = self.temporal(h)  # (N, hidden), (N, heads, L)
        if cfg.use_temporal_attention:
            out["temporal_attn"] = attn

        if fan_emb is not None:
            assert self.fan_gate is not None
            summary = self.fan_gate(fan_emb, summary)

        if self.graph is not None and edge_index is not None:
            if edge_index.dim() != 2 or edge_index.shape[0] != 2:
                raise ValueError(
                    f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}"
                )
            edge_index = edge_index.long()
            if edge_weight is None:
                edge_weight = summary.new_zeros(edge_index.shape[1])
            elif edge_weight.shape != (edge_index.shape[1],):
                raise ValueError(
                    f"edge_weight must have shape (E,) = ({edge_index.shape[1]},), "
                    f"got {tuple(edge_weight.shape)}"
                )
            summary, graph_attn = self.graph(summary, edge_index, edge_weight)
            out["graph_attn"] = graph_attn

        z = self.head_grn(summary)  # (N, hidden)
        out["embedding"] = z
        out["point"] = self.point_head(z)  # (N, H)
        raw = self.quantile_head(z).view(n, len(cfg.horizons), len(cfg.quantiles))
        # Monotone by construction: q_0 free, q_k = q_{k-1} + softplus(.) > q_{k-1}.
        steps = F.softplus(raw[..., 1:])
        out["quantiles"] = torch.cat([raw[..., :1], raw[..., :1] + steps.cumsum(dim=-1)], dim=-1)
        if self.linear is not None:  # shifts the point and every quantile alike
            shift = self.linear(last)  # (N, H)
            out["point"] = out["point"] + shift
            out["quantiles"] = out["quantiles"] + shift.unsqueeze(-1)
        return out


# Elements of the (edges, columns) gather neighbour_mean builds at once: 16M floats (64 MB),
# instead of edges x lookback x features (3.8 GB at 80,000 edges x 20 x 600).
GATHER_ELEMENTS = 2**24


def neighbour_mean(x: Tensor, edge_index: Tensor | None, edge_weight: Tensor | None
                   ) -> Tensor:
    """Correlation-weighted mean of each node's in-neighbours' ``x`` (N, ...); 0 without any.

    Weights are the edge correlations clipped at 0 (edge weight 1 when none is given), divided
    by each destination's total, so the result is a convex combination of neighbours. The
    gather runs over column chunks, so memory stays at the output's size plus a bounded
    (E, chunk) block.
    """
    out = torch.zeros_like(x)
    if edge_index is None or edge_index.shape[1] == 0:
        return out
    src, dst = edge_index[0].long(), edge_index[1].long()
    w = (edge_weight.clamp_min(0.0) if edge_weight is not None
         else x.new_ones(src.shape[0])).to(x.dtype)
    total = x.new_zeros(x.shape[0]).index_add_(0, dst, w)  # (N,)
    w = (w / total[dst].clamp_min(1e-12)).unsqueeze(1)  # (E, 1)
    flat = x.reshape(x.shape[0], -1)  # (N, L*F)
    out = out.reshape(flat.shape)
    chunk = max(1, GATHER_ELEMENTS // max(1, src.shape[0]))
    for lo in range(0, flat.shape[1], chunk):
        cols = slice(lo, lo + chunk)
        out[:, cols].index_add_(0, dst, flat[src, cols] * w)
    return out.reshape(x.shape)


def pinball_loss(
    quantile_pred: Tensor,
    target: Tensor,
    quantiles: Sequence[float] | Tensor,
    *,
    mask: Tensor | None = None,
) -> Tensor:
    """Mean quantile (pinball) loss of ``quantile_pred`` (..., Q) against ``target`` (...).

    Entries whose target is NaN/inf, or where ``mask`` (broadcastable to ``target``) is False,
    are left out of both the sum and the count. With no valid entry the result is 0, still
    attached to the graph, so a batch of all-missing labels does not crash a training step.
    """
    q = torch.as_tensor(quantiles, dtype=quantile_pred.dtype, device=quantile_pred.device)
    if quantile_pred.shape[:-1] != target.shape or quantile_pred.shape[-1] != q.numel():
        raise ValueError(
            f"quantile_pred {tuple(quantile_pred.shape)} must be target {tuple(target.shape)} "
            f"plus a last dim of {q.numel()} quantiles"
        )
    valid = torch.isfinite(target)
    if mask is not None:
        valid = valid & mask.to(torch.bool).expand_as(target)
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    diff = safe_target.unsqueeze(-1) - quantile_pred  # (..., Q)
    loss = torch.maximum(q * diff, (q - 1) * diff)
    loss = loss * valid.unsqueeze(-1)
    count = valid.sum() * q.numel()
    return loss.sum() / count.clamp(min=1)
