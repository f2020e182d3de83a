"""Every setting of one language-model run: corpus, model, attention kind, optimisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trainers.config import Checks
from trainers.runtime import RuntimeConfig


@dataclass(frozen=True)
class TrainConfig(RuntimeConfig):
    """Defaults are the small CPU preset (a 4-layer, 128-wide byte GPT).

    Length of a run: ``epochs * iters_per_epoch`` optimizer steps, or exactly ``max_steps``
    when that is > 0 (then the last epoch is cut short). One optimizer step sees
    ``batch_size * accumulation`` windows of ``block_size`` bytes. The optimisation settings
    (optimizer, lr, betas, precision, ...) are the shared runtime's, declared and checked in
    :class:`~trainers.runtime.RuntimeConfig`.
    """

    # data
    corpus: str = ""  # a text file; "" = Python standard library sources (see data.py)
    corpus_max_bytes: int = 4_000_000
    val_fraction: float = 0.1
    eval_windows: int = 64
    # model
    attention: Literal["softmax", "okadfa"] = "softmax"
    d_model: int = 128
    layers: int = 4
    heads: int = 4
    d_ff: int = 0  # 0 = 4 * d_model
    block_size: int = 128
    dropout: float = 0.0
    # OKADFA: random features per head, chunk of the linear-attention scan, and the weight
    # of the orthogonality penalty on the attention projections
    n_features: int = 64
    attn_chunk: int = 64
    ortho_weight: float = 1e-3
    # optimisation
    epochs: int = 5
    iters_per_epoch: int = 100
    max_steps: int = 0
    batch_size: int = 32
    # this workload's defaults of runtime settings
    weight_decay: float = 0.1
    betas: tuple[float, ...] = (0.9, 0.95)
    warmup_steps: int = 50

    PHRASE = "{name}={value!r} is not allowed: {rule}"

    def _check(self, checks: Checks) -> None:
        need = checks.need
        for name in ("corpus_max_bytes", "eval_windows", "d_model", "layers", "heads",
                     "block_size", "n_features", "attn_chunk", "epochs", "iters_per_epoch",
                     "batch_size"):
            need(getattr(self, name) >= 1, name, "must be >= 1")
        need(0 < self.val_fraction < 1, "val_fraction", "must be in (0, 1)")
        need(self.heads >= 1 and self.d_model % self.heads == 0, "d_model",
             f"must be a multiple of heads={self.heads}")
        need(self.d_ff >= 0, "d_ff", "must be >= 0 (0 means 4 * d_model)")
        need(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        need(self.ortho_weight >= 0, "ortho_weight", "must be >= 0")
        need(self.max_steps >= 0, "max_steps", "must be >= 0 (0 means epochs * iters_per_epoch)")

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run."""
        return self.max_steps if self.max_steps > 0 else self.epochs * self.iters_per_epoch

    @property
    def n_epochs(self) -> int:
        return -(-self.total_steps // self.iters_per_epoch)

    @property
    def ff_width(self) -> int:
        return self.d_ff if self.d_ff > 0 else 4 * self.d_model
