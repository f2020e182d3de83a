"""Every setting of one CondorBrain run: synthetic market, model, optimisation."""

from __future__ import annotations

from dataclasses import dataclass

from trainers.config import Checks
from trainers.runtime import RuntimeConfig


@dataclass(frozen=True)
class TrainConfig(RuntimeConfig):
    """Defaults are a small model that trains on a CPU in minutes; the seed sweep's GPU
    sizes (d_model 512-1024, 16-48 layers) are set by ``studies/condor_sweep.toml``.

    The optimisation settings (optimizer, lr, betas, precision, ...) are the shared runtime's,
    declared and checked in :class:`~trainers.runtime.RuntimeConfig`.
    """

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
    # optimisation
    epochs: int = 10
    batch_size: int = 256
    # this workload's defaults of runtime settings
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_batch: int = 8

    PHRASE = "{name}={value!r} is not allowed: {rule}"

    def _check(self, checks: Checks) -> None:
        need = checks.need
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
