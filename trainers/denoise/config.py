"""Every setting of one denoising run: data, model, optimisation, diagnostics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trainers.errors import UserError
from trainers.runtime import RuntimeConfig, runtime_config_of


@dataclass(frozen=True)
class TrainConfig:
    """Defaults are the reference run of the published sweep (d=1024, 300k samples, 12 epochs).

    ``optimizer = "adam"`` is the runtime's AdamW with weight decay forced to 0 (plain Adam);
    ``"sgld"`` is that same step followed by Langevin noise of variance
    ``2 * lr_t * sgld_temperature`` on every weight (``lr_t``: the scheduled rate).
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
    lr: float = 0.01
    optimizer: Literal["adam", "sgld"] = "adam"
    sgld_temperature: float = 1e-7
    betas: tuple[float, ...] = (0.9, 0.999)  # two numbers; the runtime checks the count
    scheduler: Literal["cosine", "constant"] = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float = 0.0
    accumulation: int = 1
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    device: str = "auto"
    min_batch: int = 256
    # blob diagnostics (DBSCAN on the standardised weight pairs)
    blob_eps: float = 0.5
    blob_min_samples: int = 10

    def __post_init__(self) -> None:
        problems: list[str] = []

        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                problems.append(f"{name}={getattr(self, name)!r} is not allowed: {allowed}")

        for name in ("d", "n_train", "n_test", "hidden", "epochs", "batch_size",
                     "blob_min_samples"):
            need(getattr(self, name) >= 1, name, "must be >= 1")
        need(1 <= self.sparsity <= self.d, "sparsity", f"must be in [1, d={self.d}]")
        need(self.noise_var >= 0, "noise_var", "must be >= 0")
        for name in ("enc_init", "dec_init", "blob_eps"):
            need(getattr(self, name) > 0, name, "must be > 0")
        need(self.sgld_temperature >= 0, "sgld_temperature", "must be >= 0")
        need(self.batch_size <= self.n_train, "batch_size", f"must be <= n_train={self.n_train}")
        try:  # the runtime checks its own fields (lr, betas, precision, device, ...)
            self.runtime()
        except UserError as exc:
            problems.append(str(exc))
        if problems:
            raise UserError("; ".join(problems))

    def runtime(self) -> RuntimeConfig:
        """The shared training mechanics; "adam" and "sgld" both step with weight-decay-free
        AdamW (see the class docstring)."""
        return runtime_config_of(self, optimizer="adamw", weight_decay=0.0)
