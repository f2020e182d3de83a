"""ATFT-GAT-FAN: cross-sectional stock ranking with temporal fusion, graph attention and FAN.

The flagship workload. ``WORKLOAD.train(config, ctx)`` runs the recipe in ``train.py``.
"""

from __future__ import annotations

from typing import Any

from trainers.atft_gat.config import TrainConfig
from trainers.context import TrialContext
from trainers.registry import Workload


def _train(config: TrainConfig, ctx: TrialContext) -> dict[str, Any]:
    # Imported on first use: validating a study file must not load the cache and data stack.
    from trainers.atft_gat.train import train

    return train(config, ctx)


WORKLOAD = Workload(
    name="atft_gat",
    config_cls=TrainConfig,
    train=_train,
    metrics={
        "sharpe": "maximize",
        "rank_ic": "maximize",
        "ic": "maximize",
        "icir": "maximize",
        "rank_icir": "maximize",
        "hit_rate": "maximize",
        "long_short_mean": "maximize",
        "val_loss": "minimize",
        "train_loss": "minimize",
    },
    description="ATFT-GAT-FAN cross-sectional stock ranking (synthetic market or your panel).",
)
