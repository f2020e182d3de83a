"""RuntimeConfig: the training-mechanics settings every workload shares.

Kept apart from :mod:`trainers.runtime.step` (which imports torch) so that a study file can be
validated without building anything; import it from ``trainers.runtime``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainers.errors import UserError

OPTIMIZERS = ("adamw", "adabelief")
SCHEDULERS = ("cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N", "mps")
# "cuda:N" is a pattern, not a literal; this is what select_device accepts.
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def _choices(values: tuple[str, ...]) -> str:
    return ", ".join(repr(v) for v in values)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class RuntimeConfig:
    """How a model is trained, independent of what the model is.

    Every field is validated on construction; all problems are reported together in one
    :class:`~trainers.errors.UserError` that names each field, the value received and what
    is allowed. ``betas`` may be given as a list (TOML has no tuples) and is stored as a
    tuple.
    """

    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    accumulation: int = 1
    precision: str = "auto"
    device: str = "auto"
    min_batch: int = 1
    grad_checkpointing: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        problems = list(_problems(self))
        if problems:
            raise UserError("invalid runtime config: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, where: str = "runtime") -> RuntimeConfig:
        """Build from a parsed TOML table; an unknown key is an error, never ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(
                f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"allowed keys are {', '.join(sorted(known))}"
            )
        return cls(**dict(values))


def _problems(cfg: RuntimeConfig) -> list[str]:
    out: list[str] = []

    def bad(field: str, expected: str) -> None:
        out.append(f"{field}={getattr(cfg, field)!r} (allowed: {expected})")

    if cfg.optimizer not in OPTIMIZERS:
        bad("optimizer", _choices(OPTIMIZERS))
    if cfg.scheduler not in SCHEDULERS:
        bad("scheduler", _choices(SCHEDULERS))
    if cfg.precision not in PRECISIONS:
        bad("precision", _choices(PRECISIONS))
    if not isinstance(cfg.device, str) or not DEVICE_PATTERN.match(cfg.device):
        bad("device", _choices(DEVICE_NAMES))
    if not (_is_real(cfg.lr) and cfg.lr > 0):
        bad("lr", "a finite number > 0")
    if not (_is_real(cfg.weight_decay) and cfg.weight_decay >= 0):
        bad("weight_decay", "a finite number >= 0")
    betas = cfg.betas
    if not (
        isinstance(betas, tuple)
        and len(betas) == 2
        and all(_is_real(b) and 0 <= b < 1 for b in betas)
    ):
        bad("betas", "two numbers in [0, 1), e.g. [0.9, 0.999]")
    if not (_is_real(cfg.eps) and cfg.eps > 0):
        bad("eps", "a finite number > 0")
    if not (_is_int(cfg.warmup_steps) and cfg.warmup_steps >= 0):
        bad("warmup_steps", "an integer >= 0")
    if not (_is_real(cfg.min_lr_ratio) and 0 <= cfg.min_lr_ratio <= 1):
        bad("min_lr_ratio", "a number in [0, 1]")
    if not (_is_real(cfg.grad_clip) and cfg.grad_clip >= 0):
        bad("grad_clip", "a finite number >= 0 (0 disables clipping)")
    if not (_is_int(cfg.accumulation) and cfg.accumulation >= 1):
        bad("accumulation", "an integer >= 1")
    if not (_is_int(cfg.min_batch) and cfg.min_batch >= 1):
        bad("min_batch", "an integer >= 1")
    for flag in ("grad_checkpointing", "compile"):
        if not isinstance(getattr(cfg, flag), bool):
            bad(flag, "true or false")
    return out


def runtime_config_of(config: Any, **overrides: Any) -> RuntimeConfig:
    """The RuntimeConfig of a workload's flat TrainConfig: every field with the same name.

    Workload configs declare the runtime's fields themselves (they are study parameters and
    CLI flags with workload-specific defaults); this is the one place that maps them.
    ``overrides`` are RuntimeConfig fields the workload sets itself (RuntimeConfig rejects an
    unknown one).
    """
    names = [f.name for f in dataclasses.fields(RuntimeConfig)]
    values = {n: getattr(config, n) for n in names if hasattr(config, n)}
    return RuntimeConfig(**{**values, **overrides})
