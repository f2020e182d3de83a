"""Every setting of one CondorBrain run: synthetic market, model, optimisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trainers.errors import UserError
from trainers.runtime import RuntimeConfig, runtime_config_of


@dataclass(frozen=True)
class TrainConfig:
    """Defaults are a small model that trains on a CPU in minutes; the seed sweep's GPU
    sizes (d_model 512-1024, 16-48 layers) are set by ``studies/condor_sweep.toml``."""

    # synthetic market (see trainers/condor/data.py)
    n_paths: int = 16
    n_days: int = 2520
    seq_len: int = 64
    horizon: int = 20
    ivr_window: int = 252
    val_fraction: float = 0.2
    data_seed: int = 0
    # model
    d_model: int = 128
    layers: int = 4
    d_state: int = 16
    scan_chunk: int = 16
    # optimisation (the shared runtime's settings)
    epochs: int = 10
    batch_size: int = 256
    lr: float = 3e-4
    optimizer: Literal["adamw", "adabelief"] = "adamw"
    weight_decay: float = 0.01
    betas: tuple[float, ...] = (0.9, 0.999)  # two numbers; the runtime checks the count
    eps: float = 1e-8
    scheduler: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    accumulation: int = 1
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    min_batch: int = 8
    grad_checkpointing: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        problems: list[str] = []

        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                problems.append(f"{name}={getattr(self, name)!r} is not allowed: {allowed}")

        for name in ("n_paths", "seq_len", "horizon", "d_model", "layers", "d_state",
                     "scan_chunk", "epochs", "batch_size"):
            need(getattr(self, name) >= 1, name, "must be >= 1")
        need(self.ivr_window >= 2, "ivr_window", "must be >= 2 (a rank needs a range)")
        need(0 < self.val_fraction < 1, "val_fraction", "must be in (0, 1)")
        # Warm-up for IV rank and the input window, the look-ahead of the labels (2 horizons)
        # and the purge gap must leave room for both splits.
        needed = self.ivr_window + 2 * self.seq_len + 5 * self.horizon + 50
        need(self.n_days >= needed, "n_days",
             f"must be >= {needed} for ivr_window={self.ivr_window}, seq_len={self.seq_len}, "
             f"horizon={self.horizon} (warm-up, look-ahead, purge gap and both splits)")
        try:  # the runtime checks its own fields (lr, betas, precision, device, ...)
            self.runtime()
        except UserError as exc:
            problems.append(str(exc))
        if problems:
            raise UserError("; ".join(problems))

    def runtime(self) -> RuntimeConfig:
        return runtime_config_of(self)
