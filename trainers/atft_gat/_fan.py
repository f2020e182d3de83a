"""Frequency-adaptive normalisation (FAN; Ye et al. 2024, "Frequency Adaptive Normalization
For Non-stationary Time Series Forecasting").

FAN treats the few dominant frequency components of each instance's window as the
non-stationary part: per instance and per channel it takes the rFFT over time, keeps the top-k
components by amplitude, and subtracts their inverse FFT from the input, so the backbone sees a
residual whose dominant periodic/level content is gone. A small MLP handles the removed part
separately. In forecasting FAN that MLP predicts the future dominant signal, which is added back
to the backbone's forecast. Our output is future *returns*, not a continuation of the input
series, so adding a predicted input signal back makes no sense. Instead the MLP maps the removed
components to a hidden-size embedding that the model merges into each stock's summary
(see ``ATFTGATFAN``). The backbone and the MLP still split the input exactly
(``x == residual + dominant``), as in the paper.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def fan_decompose(x: Tensor, *, top_k: int) -> tuple[Tensor, Tensor]:
    """Split each series of ``x`` (N, L, F) into (residual, dominant), both (N, L, F).

    ``dominant`` is the inverse rFFT of the ``top_k`` largest-amplitude frequency components of
    each (instance, feature) series over the time axis, the zero frequency (the window's level)
    included, as in the paper; ``residual = x - dominant``. The top-k choice is a hard,
    non-differentiable selection; gradients flow through the kept coefficients.

    The FFT always runs in float32. It is wrapped in ``autocast(enabled=False)`` because
    CPU FFTs do not support bf16 and fp16 FFTs lose too much precision.
    """
    if x.dim() != 3:
        raise ValueError(f"fan_decompose expects x of shape (N, L, F), got {tuple(x.shape)}")
    length = x.shape[1]
    n_freq = length // 2 + 1
    if not 1 <= top_k < n_freq:
        raise ValueError(f"top_k must be in [1, {n_freq - 1}] for L={length}, got {top_k}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        xf = x.float()
        spec = torch.fft.rfft(xf, dim=1)  # (N, L//2+1, F) complex
        top = spec.abs().topk(top_k, dim=1).indices  # (N, k, F)
        keep = torch.zeros(spec.shape, dtype=torch.bool, device=x.device)
        keep.scatter_(1, top, True)
        dominant = torch.fft.irfft(spec * keep, n=length, dim=1)  # (N, L, F)
        residual = xf - dominant
    return residual.to(x.dtype), dominant.to(x.dtype)


class FrequencyEmbedding(nn.Module):
    """MLP from the removed dominant signal (N, L, F) to an embedding (N, hidden)."""

    def __init__(self, *, lookback: int, n_features: int, hidden_size: int, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(lookback * n_features, hidden_size),
            nn.ELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, dominant: Tensor) -> Tensor:
        return self.mlp(dominant.flatten(1))  # (N, L*F) -> (N, hidden)
