"""Two-hot sparse denoising data: a fixed set of sparse signals, fresh Gaussian noise per pass.

A clean signal ``x`` in R^d has exactly ``sparsity`` coordinates equal to 1 (two-hot by
default) at distinct positions drawn uniformly; the rest are 0. The network sees
``y = x + sqrt(noise_var) * n`` with ``n ~ N(0, I_d)`` and must return ``x``.

Only the supports (which coordinates are hot) are stored: ``(n, sparsity)`` integers instead
of ``(n, d)`` floats, so the reference size (300k x 1024) costs 5 MB rather than 1.2 GB. The
training supports are fixed (a finite training set, so over-training means something) while
the noise is redrawn every epoch from a generator seeded by (seed, epoch), which keeps a
resumed run bit-identical to an uninterrupted one. The test set has its own supports and a
fixed noise seed, so every trial of a study is scored on exactly the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Rows per chunk when drawing supports: bounds the (chunk, d) random matrix used for
# sampling without replacement to a few tens of MB even at d = 1024.
_SUPPORT_CHUNK = 8192
# Offsets keep the train, test and noise streams independent for one ``data_seed``.
_TRAIN_STREAM, _TEST_STREAM, _TEST_NOISE_STREAM = 0, 1, 2


@dataclass(frozen=True)
class DenoiseData:
    """Supports of the training and test signals plus what is needed to rebuild inputs."""

    train_support: torch.Tensor  # (n_train, sparsity) int64
    test_support: torch.Tensor  # (n_test, sparsity) int64
    d: int
    noise_var: float
    test_noise_seed: int


def sample_supports(n: int, *, d: int, sparsity: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` sets of ``sparsity`` distinct coordinates in [0, d), uniformly: (n, sparsity)."""
    chunks = []
    for lo in range(0, n, _SUPPORT_CHUNK):
        rows = min(_SUPPORT_CHUNK, n - lo)
        # The top-k positions of i.i.d. uniforms are a uniform k-subset without replacement.
        scores = torch.rand(rows, d, generator=generator)
        chunks.append(scores.topk(sparsity, dim=1).indices)
    return torch.cat(chunks) if chunks else torch.empty(0, sparsity, dtype=torch.long)


def clean_signals(support: torch.Tensor, *, d: int) -> torch.Tensor:
    """Dense two-hot signals from supports: (B, sparsity) -> (B, d) float32 of 0s and 1s."""
    x = torch.zeros(support.shape[0], d, device=support.device)
    x.scatter_(1, support, 1.0)
    return x


def add_noise(
    clean: torch.Tensor, *, noise_var: float, generator: torch.Generator
) -> torch.Tensor:
    """``clean + sqrt(noise_var) * N(0, 1)``; the generator must live on clean's device."""
    noise = torch.randn(clean.shape, generator=generator, device=clean.device)
    return clean + noise_var**0.5 * noise


def build_data(
    *, d: int, sparsity: int, noise_var: float, n_train: int, n_test: int, data_seed: int
) -> DenoiseData:
    """The study-wide dataset: the same ``data_seed`` gives every trial the same signals."""
    train_gen = torch.Generator().manual_seed(data_seed * 3 + _TRAIN_STREAM)
    test_gen = torch.Generator().manual_seed(data_seed * 3 + _TEST_STREAM)
    return DenoiseData(
        train_support=sample_supports(n_train, d=d, sparsity=sparsity, generator=train_gen),
        test_support=sample_supports(n_test, d=d, sparsity=sparsity, generator=test_gen),
        d=d,
        noise_var=noise_var,
        test_noise_seed=data_seed * 3 + _TEST_NOISE_STREAM,
    )
