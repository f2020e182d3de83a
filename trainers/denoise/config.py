"""Every setting of one denoising run: data, model, optimisation, diagnostics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trainers.config import Checks
from trainers.runtime import PrecisionName, RuntimeConfig, SchedulerName

DENOISE_OPTIMIZERS = ("adam", "sgld")


@dataclass(frozen=True)
class TrainConfig(RuntimeConfig):
    """Defaults are the reference run of the published sweep (d=1024, 300k samples, 12 epochs).

    ``optimizer = "adam"`` is the runtime's AdamW, whose ``weight_decay`` defaults to 0 here
    (plain Adam); ``"sgld"`` is that same step followed by Langevin noise of variance
    ``2 * lr_t * sgld_temperature`` on every weight (``lr_t``: the scheduled rate). The other
    optimisation settings are the shared runtime's (:class:`~trainers.runtime.RuntimeConfig`).
    """

    # data: two-hot signals in R^d plus Gaussian noise
    d: int = 1024
    sparsity: int = 2
    noise_var: float = 0.1
    n_train: int = 300_000
    n_test: int = 10_000
    data_seed: int = 0
    # model
    hidden: int = 1024
    enc_init: float = 0.02
    dec_init: float = 0.02
    # optimisation
    epochs: int = 12
    batch_size: int = 10240
    optimizer: Literal["adam", "sgld"] = "adam"  # this workload's own; see the docstring
    sgld_temperature: float = 1e-7
    # this workload's defaults of runtime settings
    lr: float = 0.01
    scheduler: SchedulerName = "constant"
    grad_clip: float = 0.0
    precision: PrecisionName = "fp32"
    min_batch: int = 256
    # blob diagnostics (DBSCAN on the standardised weight pairs)
    blob_eps: float = 0.5
    blob_min_samples: int = 10

    PHRASE = "{name}={value!r} is not allowed: {rule}"
    RUNTIME_OVERRIDES = {"optimizer": "adamw"}  # "adam" and "sgld" both step with AdamW

    def _check(self, checks: Checks) -> None:
        need = checks.need
        need(self.optimizer in DENOISE_OPTIMIZERS, "optimizer",
             f"must be one of {', '.join(DENOISE_OPTIMIZERS)}")
        for name in ("d", "n_train", "n_test", "hidden", "epochs", "batch_size",
                     "blob_min_samples"):
            need(getattr(self, name) >= 1, name, "must be >= 1")
        need(1 <= self.sparsity <= self.d, "sparsity", f"must be in [1, d={self.d}]")
        need(self.noise_var >= 0, "noise_var", "must be >= 0")
        for name in ("enc_init", "dec_init", "blob_eps"):
            need(getattr(self, name) > 0, name, "must be > 0")
        need(self.sgld_temperature >= 0, "sgld_temperature", "must be >= 0")
        need(self.batch_size <= self.n_train, "batch_size", f"must be <= n_train={self.n_train}")
        need(not self.grad_checkpointing, "grad_checkpointing",
             "the two-layer denoiser has no blocks to recompute")
