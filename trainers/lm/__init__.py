"""Byte-level GPT language models: tiny_gpt (softmax attention) and OKADFA.

OKADFA swaps softmax attention for kernelised orthogonal linear attention (FAVOR+-style
positive random features on orthogonal projections, causal through running sums, linear in
the sequence length) and adds an orthogonality penalty on the attention projections.
``attention = "softmax" | "okadfa"`` selects the variant.
"""

from __future__ import annotations

from trainers.lm.config import TrainConfig
from trainers.lm.train import train
from trainers.registry import Workload

WORKLOAD = Workload(
    name="lm",
    config_cls=TrainConfig,
    train=train,
    metrics={
        "val_loss": "minimize",
        "perplexity": "minimize",
        "tokens_per_s": "maximize",
        "train_loss": "minimize",
    },
    description="Byte-level GPT language model (tiny_gpt) or its OKADFA linear-attention "
    "variant, on any text file or the Python standard library sources.",
)

__all__ = ["WORKLOAD", "TrainConfig", "train"]
