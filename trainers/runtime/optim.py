"""Optimizers and learning-rate schedules; re-exported by :mod:`trainers.runtime`."""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from trainers.runtime.config import RuntimeConfig


def param_groups(model: torch.nn.Module, *, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and a non-decayed group.

    Matrices, embeddings and convolution kernels (ndim >= 2) are decayed; biases and
    normalisation gains (ndim < 2) are not, as in GPT-2/nanoGPT: shrinking a LayerNorm gain
    towards 0 or a bias towards 0 is not a useful prior. Empty groups are dropped.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _flat_params(params: Iterable[Any]) -> list[torch.Tensor]:
    flat: list[torch.Tensor] = []
    for item in params:
        if isinstance(item, dict):
            flat.extend(item["params"])
        else:
            flat.append(item)
    return flat


def build_optimizer(params: Iterable[Any], cfg: RuntimeConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.optimizer``; ``params`` are tensors or param groups.

    ``adamw``: ``torch.optim.AdamW`` with the fused kernel when every parameter is on a
    CUDA device (one launch per step instead of one per tensor), torch's default
    (foreach where supported) otherwise.

    ``adabelief``: ``adabelief_pytorch.AdaBelief`` with decoupled weight decay
    (``weight_decouple=True``; the package's ``weight_decay`` defaults to 0, so
    ``cfg.weight_decay`` is passed explicitly, and a group's own ``weight_decay`` wins) and
    ``rectify=False``: the RAdam-style rectification replaces the first steps by
    un-normalised SGD-like steps (or none), which duplicates the warm-up our scheduler
    already does and makes AdaBelief-vs-AdamW comparisons in a study depend on that
    extra warm-up. Note that AdaBelief adds ``eps`` inside the square root as well, so
    the package's own recommendation is a much smaller ``eps`` (1e-16) than AdamW's.
    Its start-up prints and any warnings from construction are silenced.
    """
    params = list(params)
    if cfg.optimizer == "adamw":
        on_cuda = all(p.is_cuda and p.is_floating_point() for p in _flat_params(params))
        return torch.optim.AdamW(
            params,
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            fused=True if on_cuda else None,
        )
    if cfg.optimizer == "adabelief":
        # The package prints a change-log banner (off via print_change_log) and lines such as
        # "Weight decoupling enabled in AdaBelief" with bare print(): swallow stdout here.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            from adabelief_pytorch import AdaBelief

            return AdaBelief(
                params,
                lr=cfg.lr,
                betas=cfg.betas,
                eps=cfg.eps,
                weight_decay=cfg.weight_decay,
                weight_decouple=True,
                rectify=False,
                print_change_log=False,
            )
    raise AssertionError(f"unreachable: RuntimeConfig validated optimizer={cfg.optimizer!r}")


@dataclass(frozen=True)
class WarmupSchedule:
    """LR multiplier for optimizer step ``s`` (0-based, as ``LambdaLR`` counts).

    Warm-up: ``(s + 1) / warmup_steps`` for ``s < warmup_steps``, so the first step already
    moves (a zero LR would waste a step) and step ``warmup_steps - 1`` reaches the full LR.
    Then ``cosine`` decays from 1 to ``min_lr_ratio`` over the remaining steps and stays
    there past ``total_steps``; ``constant`` stays at 1.
    """

    kind: str
    warmup_steps: int
    total_steps: int
    min_lr_ratio: float

    def __call__(self, s: int) -> float:
        if s < self.warmup_steps:
            return (s + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        decay_steps = max(1, self.total_steps - self.warmup_steps - 1)
        progress = min(1.0, (s - self.warmup_steps) / decay_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: RuntimeConfig, *, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Warm-up + cosine (or constant) schedule over ``total_steps`` optimizer steps.

    The last optimizer step (``total_steps - 1``) runs at exactly ``min_lr_ratio * lr``.
    A :class:`WarmupSchedule` object (not a lambda) is used so the schedule travels inside
    the scheduler's state dict.
    """
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps={total_steps!r}; need an integer >= 1")
    schedule = WarmupSchedule(cfg.scheduler, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
