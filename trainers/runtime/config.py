"""RuntimeConfig: the training-mechanics settings every workload shares.

Each setting is declared here once. A workload's TrainConfig extends this class, so the
settings keep their flat names (study parameters, ``--lr`` flags); a workload that wants
another default redeclares just that field's default, and the checks below still apply.

Kept apart from :mod:`trainers.runtime.step` (which imports torch) so that a study file can
be validated without building anything; import it from ``trainers.runtime``.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from trainers.config import CheckedConfig, Checks, is_int, is_real

OptimizerName = Literal["adamw", "adabelief"]
SchedulerName = Literal["cosine", "constant"]
PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
OPTIMIZERS: tuple[str, ...] = typing.get_args(OptimizerName)
SCHEDULERS: tuple[str, ...] = typing.get_args(SchedulerName)
PRECISIONS: tuple[str, ...] = typing.get_args(PrecisionName)
DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N", "mps")
# "cuda:N" is a pattern, not a literal; this is what select_device accepts.
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def _choices(values: tuple[str, ...]) -> str:
    return ", ".join(repr(v) for v in values)


@dataclass(frozen=True)
class RuntimeConfig(CheckedConfig):
    """How a model is trained, independent of what the model is.

    Every field is checked on construction; all problems are reported together in one
    :class:`~trainers.errors.UserError` that names each field, the value received and what
    is allowed. ``betas`` may be given as a list (TOML has no tuples) and is stored as a
    tuple.
    """

    optimizer: OptimizerName = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, ...] = (0.9, 0.999)  # two numbers; checked below
    eps: float = 1e-8
    scheduler: SchedulerName = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    accumulation: int = 1
    precision: PrecisionName = "auto"
    device: str = "auto"
    min_batch: int = 1
    grad_checkpointing: bool = False
    compile: bool = False

    PHRASE = "{name}={value!r} (allowed: {rule})"
    # Runtime fields a workload gives a meaning of its own: runtime() passes these values to
    # the runtime instead, and the workload checks its field itself (denoise: its optimizer
    # "adam" or "sgld" steps with "adamw").
    RUNTIME_OVERRIDES: ClassVar[dict[str, Any]] = {}

    def _check(self, checks: Checks) -> None:
        need = checks.need
        checks.ignored = frozenset(self.RUNTIME_OVERRIDES)
        need(self.optimizer in OPTIMIZERS, "optimizer", _choices(OPTIMIZERS))
        need(self.scheduler in SCHEDULERS, "scheduler", _choices(SCHEDULERS))
        need(self.precision in PRECISIONS, "precision", _choices(PRECISIONS))
        need(isinstance(self.device, str) and bool(DEVICE_PATTERN.match(self.device)), "device",
             _choices(DEVICE_NAMES))
        need(is_real(self.lr) and self.lr > 0, "lr", "a finite number > 0")
        need(is_real(self.weight_decay) and self.weight_decay >= 0, "weight_decay",
             "a finite number >= 0")
        betas = self.betas
        need(isinstance(betas, tuple) and len(betas) == 2
             and all(is_real(b) and 0 <= b < 1 for b in betas),
             "betas", "two numbers in [0, 1), e.g. [0.9, 0.999]")
        need(is_real(self.eps) and self.eps > 0, "eps", "a finite number > 0")
        need(is_int(self.warmup_steps) and self.warmup_steps >= 0, "warmup_steps",
             "an integer >= 0")
        need(is_real(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "min_lr_ratio",
             "a number in [0, 1]")
        need(is_real(self.grad_clip) and self.grad_clip >= 0, "grad_clip",
             "a finite number >= 0 (0 disables clipping)")
        need(is_int(self.accumulation) and self.accumulation >= 1, "accumulation",
             "an integer >= 1")
        need(is_int(self.min_batch) and self.min_batch >= 1, "min_batch", "an integer >= 1")
        for flag in ("grad_checkpointing", "compile"):
            need(isinstance(getattr(self, flag), bool), flag, "true or false")

    def runtime(self) -> RuntimeConfig:
        """Only the runtime's settings, as :class:`~trainers.runtime.StepRunner` takes them
        (from a workload's TrainConfig, with its ``RUNTIME_OVERRIDES`` applied)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(RuntimeConfig)}
        return RuntimeConfig(**{**values, **self.RUNTIME_OVERRIDES})
