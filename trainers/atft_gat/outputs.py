"""What an ATFT-GAT trial leaves behind: its validation predictions and its scored model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polars as pl
import torch

from trainers.atft_gat.config import TrainConfig
from trainers.atft_gat.data import Panel
from trainers.config import to_mapping
from trainers.context import atomic_write_bytes, write_with_checksum
from trainers.runtime import StepRunner


def write_predictions(path: Path, preds: dict[str, np.ndarray]) -> None:
    """Validation rows (date, code, pred, target): anyone can recompute the metrics from them."""
    frame = pl.DataFrame({"date": preds["date"].astype("datetime64[D]"),
                          "code": preds["code"].astype(str),
                          "pred": preds["pred"].astype(np.float64),
                          "target": preds["target"].astype(np.float64)})
    if "fold" in preds:  # walk-forward validation: the fold whose model predicted the row
        frame = frame.with_columns(fold=pl.Series(preds["fold"].astype(np.int64)))
    buf = io.BytesIO()
    frame.write_parquet(buf)
    atomic_write_bytes(path, buf.getvalue())


def save_model(path: Path, runner: StepRunner, config: TrainConfig, *, panel: Panel,
               with_graph: bool) -> None:
    """The scored weights with what prediction on new dates needs (``trainers.atft_gat.predict``):
    the resolved config, the training-date feature statistics, the feature order and whether
    the scored model ran with its graph."""
    buf = io.BytesIO()
    torch.save({"model": runner.module.state_dict(), "config": to_mapping(config),
                "feature_names": list(panel.feature_names),
                "feature_mean": panel.feature_mean, "feature_std": panel.feature_std,
                "with_graph": bool(with_graph)}, buf)
    write_with_checksum(path, buf.getvalue())  # model.pt.sum: checked before every load
