"""A GPT language model over bytes (tiny_gpt), with softmax or OKADFA attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainers.lm.attention import CausalSelfAttention, orthogonality_penalty
from trainers.runtime import maybe_checkpoint

# GPT-2's initialisation: N(0, 0.02) weights, and residual output projections scaled by
# 1/sqrt(2 * layers) so the residual stream's variance does not grow with depth.
_INIT_STD = 0.02


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, *, heads: int, d_ff: int, attention: str,
                 n_features: int, chunk: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads=heads, kind=attention,
                                        n_features=n_features, chunk=chunk, dropout=dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token + learned position embeddings -> blocks -> LayerNorm -> tied output head."""

    def __init__(
        self, *, vocab_size: int, block_size: int, d_model: int, layers: int, heads: int,
        d_ff: int, attention: str, n_features: int, chunk: int, dropout: float,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.block_size = block_size
        self.grad_checkpointing = grad_checkpointing
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(block_size, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model, heads=heads, d_ff=d_ff, attention=attention, n_features=n_features,
                  chunk=chunk, dropout=dropout)
            for _ in range(layers)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tok.weight  # tied: input and output share the byte vectors
        for name, p in self.named_parameters():
            if p.ndim == 2:
                std = _INIT_STD
                if name.endswith(("attn.out.weight", "mlp.2.weight")):
                    std = _INIT_STD / (2 * layers) ** 0.5
                nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Byte ids (B, T) -> next-byte logits (B, T, vocab)."""
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.tok(idx) + self.pos(positions))  # (B, T, C)
        for block in self.blocks:
            x = maybe_checkpoint(block, x, enabled=self.grad_checkpointing and self.training)
        return self.head(self.ln_f(x))

    def orthogonality_penalty(self) -> torch.Tensor:
        """Mean over every attention projection (q, k, v, out of every layer)."""
        weights = [w for block in self.blocks for w in block.attn.projections()]
        return torch.stack([orthogonality_penalty(w) for w in weights]).mean()


def next_byte_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in nats per byte; logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
