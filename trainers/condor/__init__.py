"""CondorBrain: a Mamba-style selective state-space model for iron-condor option trades.

From a window of daily market features it predicts the four strike offsets of an iron
condor, the probability that the trade ends profitable and the IV-rank regime at expiry,
trained on a documented synthetic market (regime-switching stochastic volatility, IV, IVR).
"""

from __future__ import annotations

from trainers.condor.config import TrainConfig
from trainers.condor.train import train
from trainers.registry import Workload

WORKLOAD = Workload(
    name="condor",
    config_cls=TrainConfig,
    train=train,
    metrics={
        "val_loss": "minimize",
        "strike_l1": "minimize",
        "prob_brier": "minimize",
        "regime_acc": "maximize",
        "train_loss": "minimize",
    },
    description="CondorBrain: Mamba-style selective SSM for iron-condor strikes, probability "
    "of profit and IV regime on a synthetic options market.",
)

__all__ = ["WORKLOAD", "TrainConfig", "train"]
