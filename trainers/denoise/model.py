"""The two-layer tanh^3 denoiser and its Langevin (SGLD) noise step."""

from __future__ import annotations

import math

import torch
from torch import nn


class TwoLayerDenoiser(nn.Module):
    """``f(y) = D tanh(E y)^3`` with no biases.

    The cubed tanh is odd and flat near zero, so a unit stays quiet on pure noise and fires
    on a coordinate that carries signal: a soft threshold, which is what denoising a sparse
    signal needs. Encoder and decoder get separate Gaussian initialisation scales (std), the
    knob whose effect on the learned weight "blobs" the sweep studies.
    """

    def __init__(self, *, d: int, hidden: int, enc_init: float, dec_init: float) -> None:
        super().__init__()
        self.encoder = nn.Parameter(torch.randn(hidden, d) * enc_init)  # (H, d)
        self.decoder = nn.Parameter(torch.randn(d, hidden) * dec_init)  # (d, H)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(y @ self.encoder.T) ** 3  # (B, H)
        return h @ self.decoder.T  # (B, d)


def squared_error(pred: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per-sample squared error summed over coordinates, averaged over the batch.

    Summing over coordinates keeps the loss on the scale of the signal: predicting all zeros
    scores exactly ``sparsity`` (every hot coordinate missed by 1), whatever ``d`` is.
    """
    return (pred.float() - clean).pow(2).sum(dim=1).mean()


@torch.no_grad()
def langevin_noise(
    model: nn.Module, *, lr: float, temperature: float, generator: torch.Generator
) -> None:
    """Add ``sqrt(2 * lr * temperature) * N(0, 1)`` to every parameter, in place.

    Applied right after the optimiser's step, this turns the gradient step into a stochastic
    gradient Langevin dynamics step whose stationary distribution is ``exp(-loss / T)``
    (the gradient part uses the runtime's Adam step, i.e. a preconditioned drift).
    """
    std = math.sqrt(2.0 * lr * temperature)
    if std == 0.0:
        return
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype) * std)
