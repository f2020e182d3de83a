"""mft-denoising: a two-layer tanh^3 network denoising two-hot sparse signals.

Besides the test loss it measures how the encoder/decoder weight pairs organise into
"blobs" (DBSCAN clusters, silhouette, correlation), the quantity the published sweep tracks.
"""

from __future__ import annotations

from trainers.denoise.config import TrainConfig
from trainers.denoise.train import train
from trainers.registry import Workload

WORKLOAD = Workload(
    name="denoise",
    config_cls=TrainConfig,
    train=train,
    metrics={
        "test_loss": "minimize",
        "train_loss": "minimize",
        # More distinct blobs = more structure learned; a collapsed run has one blob.
        "n_clusters": "maximize",
        "silhouette": "maximize",
        "weight_corr": "maximize",
        "train_seconds": "minimize",
    },
    description="Two-layer tanh^3 denoiser on two-hot sparse signals (mft-denoising).",
)

__all__ = ["WORKLOAD", "TrainConfig", "train"]
