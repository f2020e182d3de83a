"""CondorBrain: a Mamba-style selective state-space stack with multi-task heads.

Each block is the Mamba recipe written in plain PyTorch: RMSNorm -> input projection into a
signal branch and a gate branch -> causal depthwise convolution -> SiLU -> *selective* SSM
(the step size Delta, input matrix B and output matrix C are computed from the input at each
time step, so the state can choose what to remember) -> gate -> output projection -> residual.

The recurrence per channel c and state n is

    h_t = exp(Delta_t[c] * A[c, n]) * h_{t-1} + Delta_t[c] * B_t[n] * x_t[c]
    y_t[c] = sum_n C_t[n] * h_t[c, n] + D[c] * x_t[c]

a linear recurrence ``h_t = a_t * h_{t-1} + b_t``, which :func:`selective_scan` evaluates with
a chunked parallel (Hillis-Steele) prefix scan instead of a Python loop over time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainers.runtime import maybe_checkpoint

# Mamba's defaults: state size 16, inner width 2x, a 4-tap causal convolution, and the
# initial step sizes spread log-uniformly over [1e-3, 1e-1] so channels start with memories
# from ~10 to ~1000 steps.
D_STATE = 16
EXPAND = 2
D_CONV = 4
DT_MIN, DT_MAX = 1e-3, 1e-1


def _scan_chunk(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive prefix scan of ``h_t = a_t h_{t-1} + b_t`` (h_{-1} = 0) along dim 1.

    Returns (prefix products of a, states); both (B, L, ...). Hillis-Steele: log2(L) rounds,
    each combining every element with the one ``offset`` steps earlier.
    """
    length, offset = a.shape[1], 1
    while offset < length:
        a_prev = torch.cat([torch.ones_like(a[:, :offset]), a[:, :-offset]], dim=1)
        b_prev = torch.cat([torch.zeros_like(b[:, :offset]), b[:, :-offset]], dim=1)
        b = a * b_prev + b
        a = a * a_prev
        offset *= 2
    return a, b


def selective_scan(
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    *,
    chunk: int = 16,
) -> torch.Tensor:
    """The selective SSM output for inputs x (Bt, T, Di) with per-step delta (Bt, T, Di),
    A (Di, N), B and C (Bt, T, N), D (Di,) -> (Bt, T, Di).

    Time is cut into chunks of ``chunk`` steps; inside a chunk the states come from a
    parallel prefix scan, and the state at a chunk's end carries into the next chunk
    (``h_t += prod(a up to t) * h_carry``). The (Bt, L, Di, N) tensors exist for one chunk
    at a time in inference; in training autograd keeps every chunk's, which is why deep
    stacks use gradient checkpointing (one block's worth at a time).
    """
    ys = []
    carry = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])  # (Bt, Di, N) state so far
    for lo in range(0, x.shape[1], chunk):
        part = slice(lo, lo + chunk)
        # Built per chunk, not for the whole sequence: (Bt, L, Di, N) is the big tensor.
        a = torch.exp(delta[:, part].unsqueeze(-1) * A)  # (Bt, L, Di, N) decay, in (0, 1]
        b = (delta[:, part] * x[:, part]).unsqueeze(-1) * B[:, part].unsqueeze(2)  # input
        prod, h = _scan_chunk(a, b)
        h = h + prod * carry.unsqueeze(1)  # (Bt, L, Di, N)
        carry = h[:, -1]
        ys.append((h * C[:, part].unsqueeze(2)).sum(dim=-1))  # (Bt, L, Di)
    return torch.cat(ys, dim=1) + D * x


class RMSNorm(nn.Module):
    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


class MambaBlock(nn.Module):
    """Pre-norm residual block around one selective SSM."""

    def __init__(self, d_model: int, *, d_state: int, scan_chunk: int) -> None:
        super().__init__()
        d_inner = EXPAND * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.d_state = d_state
        self.scan_chunk = scan_chunk
        self.norm = RMSNorm(d_model)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        # Depthwise and left-padded: position t only sees t-3..t (causal).
        self.conv = nn.Conv1d(d_inner, d_inner, D_CONV, groups=d_inner, padding=D_CONV - 1)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner)
        dt = torch.exp(torch.rand(d_inner) * (math.log(DT_MAX) - math.log(DT_MIN))
                       + math.log(DT_MIN))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        # A = -exp(A_log) < 0 keeps every state decaying; S4D-real init A[c, n] = -(n + 1).
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1).float()).repeat(
            d_inner, 1))  # (Di, N)
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        seq_len = u.shape[1]
        x, z = self.in_proj(self.norm(u)).chunk(2, dim=-1)  # (B, T, Di) each
        x = self.conv(x.transpose(1, 2))[..., :seq_len].transpose(1, 2)  # (B, T, Di)
        x = F.silu(x)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))  # (B, T, Di), input-dependent step > 0
        A = -torch.exp(self.A_log.float())  # (Di, N)
        # The scan runs in fp32: products of many decays underflow in bf16/fp16.
        y = selective_scan(x.float(), delta.float(), A, B.float(), C.float(), self.D.float(),
                           chunk=self.scan_chunk)
        y = y.to(x.dtype) * F.silu(z)
        return u + self.out_proj(y)


class CondorBrain(nn.Module):
    """Window of daily features (B, T, F) -> strike offsets (B, 4), pop logit (B,),
    regime logits (B, n_regimes), read from the last time step's representation."""

    def __init__(
        self, *, n_features: int, d_model: int, layers: int, d_state: int, n_regimes: int,
        scan_chunk: int, grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        # Recompute each block's activations in backward: memory per layer instead of per
        # stack, the price of the 48-layer sweep on one GPU.
        self.grad_checkpointing = grad_checkpointing
        self.embed = nn.Linear(n_features, d_model)
        self.blocks = nn.ModuleList(
            MambaBlock(d_model, d_state=d_state, scan_chunk=scan_chunk) for _ in range(layers)
        )
        self.norm = RMSNorm(d_model)
        self.strike_head = nn.Linear(d_model, 4)
        self.pop_head = nn.Linear(d_model, 1)
        self.regime_head = nn.Linear(d_model, n_regimes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.embed(x)  # (B, T, d_model)
        for block in self.blocks:
            h = maybe_checkpoint(block, h, enabled=self.grad_checkpointing and self.training)
        last = self.norm(h[:, -1])  # (B, d_model): the state after the whole window
        return self.strike_head(last), self.pop_head(last)[:, 0], self.regime_head(last)
