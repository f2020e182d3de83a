"""Predict a trained ATFT-GAT-FAN trial on its study's validation or held-out test dates.

Only ``hpo.evaluate`` opens the test period, once, after the study has chosen its trials,
through the workload's held-out capability (``heldout.py``), which calls this module. Given a
trial directory (``model.pt`` holds the weights, the resolved config, the training-date
feature statistics and whether the scored model ran with its graph), it rebuilds exactly what
training saw and goes on past it:

1. the same feature cache (same source, same spec), its memory-mapped panel in full;
2. the same calendar split (``date_split``; it depends on the panel and the data settings
   only), and the same execution lag on the targets;
3. the windows standardised with the **saved** training statistics (nothing of the test
   period enters the scaling), missing values imputed as in training;
4. the correlation graphs over the whole panel: the graph of date t reads returns strictly
   before t, so a test date's graph is what a live model would have had that morning;
5. the model in eval mode, dates packed into forward passes of at most ``batch_size``
   stock-day rows (a date is never cut, so every date keeps its whole graph).

Predicting the validation dates this way reproduces the trial's ``predictions.parquet`` (a
test proves it), which is the evidence that the test predictions come from the same model and
pipeline. Rows whose ``metric_horizon`` target is missing are dropped, as in validation.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from trainers.atft_gat.config import TrainConfig
from trainers.atft_gat.data import DateSplit, cache_panel, standardise, study_split
from trainers.atft_gat.model import ATFTGATFAN
from trainers.atft_gat.train import (
    load_features,
    load_graphs,
    make_batch,
    no_graphs,
    pack_dates,
    zscore_targets,
)
from trainers.config import from_mapping
from trainers.context import CheckpointDamaged, verified_bytes
from trainers.errors import UserError
from trainers.heldout import file_digest

MODEL_FILE = "model.pt"
# A walk-forward trial keeps every fold's model here (fold_<k>.pt, k from 1): the fold
# ensemble scores the test period with all of them.
FOLD_MODELS = "fold_models"
PERIODS = ("val", "test")


@dataclass(frozen=True)
class TrainedModel:
    """What ``model.pt`` holds, ready to predict."""

    config: TrainConfig
    model: ATFTGATFAN  # in eval mode
    feature_names: tuple[str, ...]
    feature_mean: torch.Tensor | None  # (F,) float32 training-date statistics, or None
    feature_std: torch.Tensor | None
    with_graph: bool


def forward_dates(trained: TrainedModel, panel: Any, graphs: Any,
                  dates: np.ndarray) -> dict[str, np.ndarray]:
    """The model on the panel's ``dates`` (indices), packed into forward passes of at most
    ``batch_size`` rows (a date is never cut): ``date, code, pred, target`` arrays, every
    stock of each date (``target`` the ``metric_horizon`` label, NaN where unknown). The
    panel is standardised already."""
    config = trained.config
    y_z = zscore_targets(panel.y)
    h_idx = list(config.horizons).index(config.metric_horizon)
    cols: dict[str, list[np.ndarray]] = {"date": [], "code": [], "pred": [], "target": []}
    codes = np.asarray(panel.codes, dtype=object)
    with torch.inference_mode():
        for group in pack_dates(panel, dates, lambda: config.batch_size):
            b = make_batch(panel, y_z, graphs, group, lookback=config.lookback,
                           with_graph=trained.with_graph)
            edges = (b.edges, b.weight) if trained.with_graph else (None, None)
            out = trained.model(b.x, *edges)
            cols["pred"].append(out["point"][:, h_idx].float().numpy())
            cols["target"].append(b.y_raw[:, h_idx].numpy())
            cols["date"].append(panel.dates[b.date[b.group.numpy()]])
            cols["code"].append(codes[b.stock.numpy()])
    return {k: np.concatenate(v) for k, v in cols.items()}


def model_digest(trial_dir: Path) -> str:
    """SHA-256 of the trial's ``model.pt`` (identifies the weights a report was made from)."""
    return file_digest(Path(trial_dir) / MODEL_FILE)


def fold_model_files(trial_dir: Path) -> list[Path]:
    """A walk-forward trial's fold models (``fold_models/fold_<k>.pt``), in fold order; [] for
    a holdout trial or one saved before fold models were kept."""
    folder = Path(trial_dir) / FOLD_MODELS
    files = [p for p in folder.glob("fold_*.pt") if p.stem.removeprefix("fold_").isdigit()]
    return sorted(files, key=lambda p: int(p.stem.removeprefix("fold_")))


def load_trained(trial_dir: Path, *, name: str = MODEL_FILE) -> TrainedModel:
    """The trained model of ``trial_dir`` (CPU, eval mode); a missing file is a UserError.
    ``name``: the file under ``trial_dir`` (``fold_models/fold_2.pt`` for a fold's model)."""
    path = Path(trial_dir) / name
    if not path.is_file():
        raise UserError(f"no {name} in {trial_dir}: the trial did not finish training, or "
                        "its outputs are under another --output directory")
    try:
        data = verified_bytes(path)
        saved: dict[str, Any] = torch.load(io.BytesIO(data), map_location="cpu",
                                           weights_only=False)
    except CheckpointDamaged as exc:
        raise UserError(f"{path} is damaged ({exc}); it cannot be trusted: run the trial "
                        "again (or restore the file from a backup)") from None
    except Exception as exc:  # noqa: BLE001 - a file that does not load is damaged too
        raise UserError(f"{path} does not load ({str(exc).splitlines()[0][:120]}); run the "
                        "trial again") from None
    config = from_mapping(TrainConfig, saved["config"], where=str(path))
    names = saved.get("feature_names")
    if names is None:
        raise UserError(f"{path} holds no feature names: it was written before models were "
                        "saved for prediction; re-run the trial")
    # With missing indicators the model gets a 0/1 channel per feature as well.
    n_inputs = len(names) * (2 if config.missing_indicator else 1)
    model = ATFTGATFAN(config.model_config(), n_features=n_inputs)
    model.load_state_dict(saved["model"])
    model.eval()
    with_graph = saved.get("with_graph")
    if with_graph is None:  # older files: the last phase decides, as training did
        with_graph = config.phase_plan()[-1] != "baseline"
    return TrainedModel(config=config, model=model,
                        feature_names=tuple(names),
                        feature_mean=saved.get("feature_mean"),
                        feature_std=saved.get("feature_std"), with_graph=bool(with_graph))



def predict_period(trial_dir: Path, *, cache_dir: Path, period: str = "test",
                   trained: TrainedModel | None = None) -> tuple[pl.DataFrame, DateSplit,
                                                                 np.ndarray]:
    """Predictions of the trial's model on the study's ``period`` ("test" or "val") dates.

    ``cache_dir`` is the feature cache root the study's trials used (``<output>/cache``;
    a config with its own ``cache_dir`` uses that). Returns ``(frame, split, dates)``: the
    rows ``date, code, pred, target`` (``target`` the ``metric_horizon`` return the trial is
    scored on, NaN rows dropped; the schema of ``predictions.parquet``), the split and the
    panel's calendar dates.
    """
    if period not in PERIODS:
        raise ValueError(f"period must be one of {PERIODS}, got {period!r}")
    trained = trained or load_trained(trial_dir)
    config = trained.config
    fc = load_features(config, Path(cache_dir))
    panel = cache_panel(fc, missing_indicator=config.missing_indicator)
    if tuple(panel.feature_names) != trained.feature_names:
        raise UserError(f"{trial_dir}: the model was trained on features "
                        f"{list(trained.feature_names)}, the cache now has "
                        f"{list(panel.feature_names)}")
    split = study_split(config, panel.dates)
    dates = getattr(split, period)
    if len(dates) == 0:
        raise UserError(f"the study holds out no {period} period (test_fraction = "
                        f"{config.test_fraction}); nothing to predict")
    full_dates = panel.dates
    panel = panel.lagged(config.execution_lag)
    # A model scored without its graph reads no edges: none is built.
    graphs = (load_graphs(fc, panel, config) if trained.with_graph
              else no_graphs(len(panel.dates)))
    if trained.feature_mean is not None and trained.feature_std is not None:
        # Windows are standardised with these as they are cut (Panel.window).
        panel = replace(panel, feature_mean=trained.feature_mean,
                        feature_std=trained.feature_std)
    else:  # older model files: the same training-date statistics, from the cache
        train_dates = split.train[split.train >= config.lookback - 1]
        panel = standardise(panel, train_dates, moments=fc.feature_moments(train_dates))
    merged = forward_dates(trained, panel, graphs, dates)
    keep = np.isfinite(merged["target"])
    frame = pl.DataFrame({"date": merged["date"][keep].astype("datetime64[D]"),
                          "code": merged["code"][keep].astype(str),
                          "pred": merged["pred"][keep].astype(np.float64),
                          "target": merged["target"][keep].astype(np.float64)})
    return frame, split, full_dates
