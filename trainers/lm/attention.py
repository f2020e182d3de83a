"""Attention layers: causal softmax (GPT) and OKADFA kernelised orthogonal linear attention.

OKADFA replaces ``softmax(q k^T / sqrt(d))`` by a random-feature kernel
``phi(q) . phi(k) ~ exp(q . k / sqrt(d))`` (FAVOR+ positive features):

    phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(m),   x' = x / d^(1/4),   W: (m, d) random

whose rows are drawn in blocks of ``d`` mutually orthogonal directions (QR of a Gaussian
matrix) with chi-distributed lengths, so each row is still marginally N(0, I) while the
orthogonality lowers the estimator's variance. Because every feature is positive, the
normaliser never vanishes or turns negative. Causal attention is then

    out_t = phi(q_t) . S_t / phi(q_t) . z_t,   S_t = sum_{s<=t} phi(k_s) v_s^T,  z_t = sum phi(k_s)

computed chunk by chunk: exact masked products inside a chunk of ``chunk`` positions and
running sums ``S``, ``z`` carried across chunks. Cost and memory are O(T * chunk) in the
sequence length T, i.e. linear for a fixed chunk, instead of softmax's O(T^2).

The orthogonality regulariser (:func:`orthogonality_penalty`) keeps the attention
projections near-orthogonal, the "O" of OKADFA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Cap on a key feature's exponent: e^60 times a few thousand keys stays far below fp32's max.
_KEY_LOG_CAP = 60.0


def orthogonal_gaussian(m: int, d: int, *, generator: torch.Generator | None = None
                        ) -> torch.Tensor:
    """(m, d) rows in blocks of <= d orthogonal directions, each row's norm chi(d)-distributed
    (the norm of a d-dimensional standard Gaussian), as in FAVOR+."""
    gaussian = torch.randn(math.ceil(m / d), d, d, generator=generator)
    q, _ = torch.linalg.qr(gaussian)  # batched: (blocks, d, d), orthonormal columns
    directions = q.transpose(1, 2).reshape(-1, d)[:m]  # (m, d), orthonormal rows per block
    norms = torch.randn(m, d, generator=generator).norm(dim=1, keepdim=True)  # (m, 1)
    return directions * norms


def positive_features(x: torch.Tensor, projection: torch.Tensor, *, is_query: bool
                      ) -> torch.Tensor:
    """FAVOR+ features of x (B, H, T, d) with projection (m, d) -> (B, H, T, m), in fp32.

    The exponent ``w . x' - |x'|^2 / 2`` is at most ``|w|^2 / 2`` (about d / 2), so it cannot
    blow up with the input. Queries subtract their own largest exponent (a per-query
    constant cancels in ``phi(q) S / phi(q) z``), which makes their top feature exactly 1.
    Keys get no data-dependent shift: a shift shared by all keys of a sequence would have to
    look at future keys and break strict causality; instead the exponent is capped at
    ``_KEY_LOG_CAP``, which only bites for heads wider than ~100 dims (fp32 overflows at 88).
    """
    d = x.shape[-1]
    x = x.float() * d**-0.25
    logits = x @ projection.T - 0.5 * x.pow(2).sum(dim=-1, keepdim=True)  # (B, H, T, m)
    if is_query:
        logits = logits - logits.amax(dim=-1, keepdim=True).detach()
    else:
        logits = logits.clamp(max=_KEY_LOG_CAP)
    return torch.exp(logits) / math.sqrt(projection.shape[0])


def causal_linear_attention(
    qf: torch.Tensor, kf: torch.Tensor, v: torch.Tensor, *, chunk: int, eps: float = 1e-12
) -> torch.Tensor:
    """Causal ``sum_{s<=t} (qf_t . kf_s) v_s / sum_{s<=t} qf_t . kf_s``.

    qf, kf: (B, H, T, m) non-negative features; v: (B, H, T, dv) -> (B, H, T, dv), fp32.
    """
    batch, heads, seq_len, m = qf.shape
    dv = v.shape[-1]
    pad = (-seq_len) % chunk
    v = v.to(qf.dtype)  # fp32 features set the precision of the whole computation
    if pad:  # zero keys/values at the end: they add nothing to any earlier position
        qf, kf, v = (F.pad(t, (0, 0, 0, pad)) for t in (qf, kf, v))
    n = qf.shape[2] // chunk
    qc = qf.reshape(batch, heads, n, chunk, m)
    kc = kf.reshape(batch, heads, n, chunk, m)
    vc = v.reshape(batch, heads, n, chunk, dv)

    # Within a chunk: exact masked scores (B, H, n, c, c).
    mask = torch.ones(chunk, chunk, dtype=torch.bool, device=qf.device).tril()
    scores = (qc @ kc.transpose(-1, -2)).masked_fill(~mask, 0.0)
    num = scores @ vc  # (B, H, n, c, dv)
    den = scores.sum(dim=-1)  # (B, H, n, c)

    # Across chunks: running sums of everything *before* each chunk (exclusive prefix).
    kv = kc.transpose(-1, -2) @ vc  # (B, H, n, m, dv)
    kv_before = torch.cumsum(kv, dim=2) - kv
    z_before = torch.cumsum(kc.sum(dim=3), dim=2) - kc.sum(dim=3)  # (B, H, n, m)
    num = num + qc @ kv_before
    den = den + (qc * z_before.unsqueeze(3)).sum(dim=-1)
    out = num / (den.unsqueeze(-1) + eps)
    return out.reshape(batch, heads, n * chunk, dv)[:, :, :seq_len]


def orthogonality_penalty(weight: torch.Tensor) -> torch.Tensor:
    """``||W W^T - I||_F^2 / out`` for W (out, in): 0 exactly when W's rows are orthonormal.

    Dividing by the number of rows (not by all out^2 entries) keeps the value near 1 for a
    small random init at any width while the gradient stays large enough to matter next to
    the language-model loss."""
    w = weight.float()
    gram = w @ w.T  # (out, out)
    return (gram - torch.eye(gram.shape[0], device=w.device)).pow(2).sum() / gram.shape[0]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; ``kind`` picks softmax or OKADFA linear attention."""

    def __init__(
        self, d_model: int, *, heads: int, kind: str, n_features: int, chunk: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.heads, self.kind, self.chunk = heads, kind, chunk
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout
        if kind == "okadfa":
            # One fixed draw per layer, shared by all heads; a buffer, so it is saved with
            # the model and a resumed run uses the same kernel.
            self.register_buffer(
                "projection", orthogonal_gaussian(n_features, d_model // heads)
            )

    def projections(self) -> list[torch.Tensor]:
        return [self.q.weight, self.k.weight, self.v.weight, self.out.weight]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, d_model = x.shape
        q, k, v = (
            proj(x).view(batch, seq_len, self.heads, -1).transpose(1, 2)  # (B, H, T, dh)
            for proj in (self.q, self.k, self.v)
        )
        if self.kind == "softmax":
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        else:
            # fp32 throughout: sums of exponentials lose too much in bf16/fp16, and autocast
            # would otherwise run these matmuls in half precision.
            with torch.autocast(device_type=x.device.type, enabled=False):
                qf = positive_features(q, self.projection, is_query=True)
                kf = positive_features(k, self.projection, is_query=False)
                y = causal_linear_attention(qf, kf, v, chunk=self.chunk).to(v.dtype)
        y = y.transpose(1, 2).reshape(batch, seq_len, d_model)  # (B, T, C)
        return F.dropout(self.out(y), p=self.dropout, training=self.training)
