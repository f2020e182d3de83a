"""Temporal Fusion Transformer building blocks: gated residual networks, variable selection and
the temporal-fusion block (LSTM + self-attention with gated skip connections).

Per-feature layers are vectorised: the F feature-wise GRNs of the variable selection network
are batched matrix products over a (F, in, out) weight, not F modules called in a Python loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GroupedLinear(nn.Module):
    """``groups`` independent linear maps over a group-first input: (G, M, in) -> (G, M, out).

    Group-first, so each group's rows are one contiguous matrix and the whole layer is one
    ``baddbmm`` without permute copies. Initialised like ``nn.Linear`` (uniform in
    +-1/sqrt(in)) for each group.
    """

    def __init__(self, groups: int, in_features: int, out_features: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(groups, out_features))
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)


class GroupedLayerNorm(nn.Module):
    """LayerNorm over the last dim of a (G, M, size) input with a gain/bias per group."""

    def __init__(self, groups: int, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(groups, size))
        self.bias = nn.Parameter(torch.zeros(groups, size))

    def forward(self, x: Tensor) -> Tensor:
        normed = F.layer_norm(x, x.shape[-1:])
        return torch.addcmul(self.bias.unsqueeze(1), normed, self.weight.unsqueeze(1))


def _linear(groups: int | None, in_features: int, out_features: int) -> nn.Module:
    if groups is None:
        return nn.Linear(in_features, out_features)
    return GroupedLinear(groups, in_features, out_features)


def _norm(groups: int | None, size: int) -> nn.Module:
    return nn.LayerNorm(size) if groups is None else GroupedLayerNorm(groups, size)


class GateAddNorm(nn.Module):
    """TFT's gated skip connection: ``LayerNorm(skip + GLU(dropout(x)))``.

    The GLU gate can close (output ~0), which lets the network bypass a block it does not need.
    """

    def __init__(self, size: int, *, dropout: float, groups: int | None = None):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.glu = _linear(groups, size, 2 * size)
        self.norm = _norm(groups, size)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.norm(skip + F.glu(self.glu(self.dropout(x)), dim=-1))


class GatedResidualNetwork(nn.Module):
    """TFT's GRN: ``GateAddNorm(W2 ELU(W1 a + b1) + b2, skip(a))``.

    With ``groups`` set, the input is group-first (G, M, in) and every group has its own
    weights (the feature-wise GRNs of variable selection). The skip is a linear projection
    only when ``in_features != out_features``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_size: int,
        out_features: int,
        *,
        dropout: float,
        groups: int | None = None,
    ):
        super().__init__()
        self.fc1 = _linear(groups, in_features, hidden_size)
        self.fc2 = _linear(groups, hidden_size, out_features)
        self.skip = (
            None if in_features == out_features else _linear(groups, in_features, out_features)
        )
        self.gate = GateAddNorm(out_features, dropout=dropout, groups=groups)

    def forward(self, a: Tensor) -> Tensor:
        skip = a if self.skip is None else self.skip(a)
        return self.after_fc1(self.fc1(a), skip)

    def after_fc1(self, pre: Tensor, skip: Tensor) -> Tensor:
        """The GRN from the first layer's output on; lets a caller compute ``fc1`` faster."""
        return self.gate(self.fc2(F.elu(pre)), skip)


class VariableSelection(nn.Module):
    """TFT variable selection: per-feature embeddings, softmax-weighted over features.

    Each scalar input x[..., f] is embedded to ``hidden`` with its own affine map
    (emb_f = x_f w_f + b_f). A GRN over the flattened embeddings of all features gives F
    selection logits, softmaxed over features, at every time step (as in TFT).

    What each feature contributes, two modes:

    * ``per_feature_grn=True`` (TFT as published): a GRN per feature transforms its embedding,
      xi_f = GRN_f(emb_f), and the output is sum_f v_f xi_f. The F GRNs run on (F, N*L, hidden)
      tensors, several of which autograd keeps: memory grows as F x N x L x hidden (about
      135 GB for one 4,000-stock date at 600 inputs, lookback 20, hidden 64).
    * ``per_feature_grn=False`` (the default): the per-feature transform is the embedding
      itself, xi_f = emb_f, and one GRN shared by all features transforms the selected mixture:
      GRN(sum_f v_f emb_f). The sum is linear in the embeddings, so it is two matmuls,
      ``(v * x) @ w + v @ b``, and nothing of size F x N x L x hidden is ever built; memory
      grows as F x N x L (the selection weights). What changes against TFT: features are mixed
      before the nonlinearity, not after (the shared GRN sees the weighted mixture, not each
      feature alone). With a single feature the two modes are the same function (tested).

    Speed-up, same function: every layer that reads the embeddings linearly (the feature GRNs'
    first layer, the selection GRN's first layer and skip projection) sees an affine function of
    the F scalars. Its weights are therefore folded with the embedding weights first, per
    forward pass. That layer then costs O(F * hidden) per row instead of O(F * hidden^2), and
    the flattened (F * hidden)-wide input is never built. The test suite checks the result
    against the unfolded computation.
    """

    def __init__(
        self, n_features: int, hidden_size: int, *, dropout: float, per_feature_grn: bool = False
    ):
        super().__init__()
        self.n_features = n_features
        self.hidden_size = hidden_size
        self.embed_weight = nn.Parameter(torch.randn(n_features, hidden_size))  # w_f
        self.embed_bias = nn.Parameter(torch.zeros(n_features, hidden_size))  # b_f
        self.feature_grn: GatedResidualNetwork | None = None
        self.mixture_grn: GatedResidualNetwork | None = None
        if per_feature_grn:
            self.feature_grn = GatedResidualNetwork(
                hidden_size, hidden_size, hidden_size, dropout=dropout, groups=n_features
            )
        else:
            self.mixture_grn = GatedResidualNetwork(
                hidden_size, hidden_size, hidden_size, dropout=dropout
            )
        self.selection_grn = GatedResidualNetwork(
            n_features * hidden_size, hidden_size, n_features, dropout=dropout
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, L, F) -> (selected (N, L, hidden), weights (N, L, F) summing to 1 over F)."""
        n, length, n_feat = x.shape
        hidden = self.hidden_size
        w, b = self.embed_weight, self.embed_bias  # (F, H)
        rows = x.reshape(n * length, n_feat)  # (M, F), M = N*L

        # Selection weights: fc1 and skip of the selection GRN, folded with the embedding.
        sel = self.selection_grn
        assert isinstance(sel.fc1, nn.Linear) and isinstance(sel.skip, nn.Linear)
        fc1_w = sel.fc1.weight.view(-1, n_feat, hidden)  # (H, F, H_emb)
        skip_w = sel.skip.weight.view(-1, n_feat, hidden)  # (F_out, F, H_emb)
        pre = torch.addmm(
            torch.einsum("fe,hfe->h", b, fc1_w) + sel.fc1.bias,
            rows,
            torch.einsum("fe,hfe->fh", w, fc1_w),
        )  # (M, H)
        skip = torch.addmm(
            torch.einsum("fe,ofe->o", b, skip_w) + sel.skip.bias,
            rows,
            torch.einsum("fe,ofe->fo", w, skip_w),
        )  # (M, F)
        weights = torch.softmax(sel.after_fc1(pre, skip), dim=-1)  # (M, F)

        if self.mixture_grn is not None:
            # sum_f v_f (x_f w_f + b_f) = (v * x) @ w + v @ b: (M, F) @ (F, H), twice.
            mixed = torch.addmm(weights @ b, weights * rows, w)  # (M, H)
            selected = self.mixture_grn(mixed)
            return selected.view(n, length, hidden), weights.view(n, length, n_feat)

        # Feature-wise GRNs, group-first (F, M, H).
        feat = self.feature_grn
        assert feat is not None and isinstance(feat.fc1, GroupedLinear)
        cols = rows.t().unsqueeze(-1)  # (F, M, 1)
        emb = torch.addcmul(b.unsqueeze(1), cols, w.unsqueeze(1))  # (F, M, H)
        fc1_w = torch.einsum("fe,feo->fo", w, feat.fc1.weight)  # (F, H)
        fc1_b = torch.einsum("fe,feo->fo", b, feat.fc1.weight) + feat.fc1.bias
        pre = torch.addcmul(fc1_b.unsqueeze(1), cols, fc1_w.unsqueeze(1))  # (F, M, H)
        transformed = feat.after_fc1(pre, emb)  # (F, M, H)

        selected = torch.einsum("mf,fmh->mh", weights, transformed)  # (M, H)
        return selected.view(n, length, hidden), weights.view(n, length, n_feat)


class TemporalFusion(nn.Module):
    """LSTM over the window, then one multi-head self-attention step, each behind a gated skip.

    Only the last time step's state is returned, so attention is computed for that single
    query over all L steps of the window. That is exactly what a causal mask would give the
    last step: every position in the window is in the past relative to the prediction date.
    Computing only one query saves the (L - 1) other query rows, which nothing downstream reads.
    """

    def __init__(
        self,
        hidden_size: int,
        *,
        lstm_layers: int,
        use_attention: bool,
        attn_heads: int,
        dropout: float,
    ):
        super().__init__()
        self.lstm = nn.LSTM(
            hidden_size,
            hidden_size,
            num_layers=lstm_layers,
            batch_first=True,
            # nn.LSTM applies dropout only between stacked layers and warns when there is one.
            dropout=dropout if lstm_layers > 1 else 0.0,
        )
        self.lstm_gate = GateAddNorm(hidden_size, dropout=dropout)
        if use_attention:
            self.attn: nn.MultiheadAttention | None = nn.MultiheadAttention(
                hidden_size, attn_heads, dropout=dropout, batch_first=True
            )
            self.attn_gate: GateAddNorm | None = GateAddNorm(hidden_size, dropout=dropout)
        else:
            self.attn = None
            self.attn_gate = None

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """h (N, L, H) -> (summary (N, H), attention weights (N, heads, L) or an empty tensor)."""
        out, _ = self.lstm(h)  # (N, L, H)
        out = self.lstm_gate(out, h)
        last = out[:, -1:]  # (N, 1, H)
        if self.attn is None or self.attn_gate is None:
            return last[:, 0], h.new_zeros(0)
        ctx, weights = self.attn(
            last, out, out, need_weights=True, average_attn_weights=False
        )  # (N, 1, H), (N, heads, 1, L)
        last = self.attn_gate(ctx, last)
        return last[:, 0], weights[:, :, 0]
