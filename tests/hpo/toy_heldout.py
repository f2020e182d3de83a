"""A toy ranking workload with a held-out test period, plugged in from outside ``hpo/``.

A linear model ranks stocks of a small seeded panel (three features, the first one carrying
the signal) and is fitted by gradient descent on the training dates; it is scored on the
validation dates and saves its weights. Its ``HELDOUT`` capability predicts the test dates
from the saved weights, so ``hpo.evaluate`` opens its test period exactly as it does the
flagship's, with nothing in ``hpo/`` knowing this module.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from trainers.attrs import DATE_SPLIT
from trainers.context import TrialContext, atomic_write_json
from trainers.errors import UserError
from trainers.heldout import (
    VALIDATION_PREDICTIONS,
    HeldOut,
    Prediction,
    file_digest,
    ranking_moments,
    ranking_score,
)
from trainers.registry import Workload

MODEL_FILE = "weights.json"
FEATURES = ("f_signal", "f_noise_a", "f_noise_b")


@dataclass(frozen=True)
class RankConfig:
    n_stocks: int = 40
    n_dates: int = 180
    panel_seed: int = 7
    signal: float = 0.3      # weight of f_signal in the next-day return
    lr: float = 0.1
    epochs: int = 3
    l2: float = 0.0
    val_fraction: float = 0.25
    test_fraction: float = 0.25

    def __post_init__(self) -> None:
        if not 0 <= self.test_fraction < 1 or not 0 < self.val_fraction < 1:
            raise UserError("val_fraction must be in (0, 1) and test_fraction in [0, 1)")


def panel(config: RankConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dates, features (D, S, F), next-day returns (D, S)), the same for every trial."""
    rng = np.random.default_rng(config.panel_seed)
    x = rng.standard_normal((config.n_dates, config.n_stocks, len(FEATURES)))
    y = config.signal * x[..., 0] + rng.standard_normal((config.n_dates, config.n_stocks))
    dates = np.datetime64("2021-01-04") + np.arange(config.n_dates)
    return dates, x, 0.01 * y


def split(config: RankConfig) -> dict[str, np.ndarray]:
    n = config.n_dates
    n_test = int(round(n * config.test_fraction))
    n_val = int(round(n * config.val_fraction))
    idx = np.arange(n)
    return {"train": idx[: n - n_test - n_val], "val": idx[n - n_test - n_val: n - n_test],
            "test": idx[n - n_test:]}


def ranges(config: RankConfig, dates: np.ndarray) -> dict[str, list[str]]:
    return {k: [str(dates[v[0]]), str(dates[v[-1]])]
            for k, v in split(config).items() if len(v)}


def frame(dates: np.ndarray, x: np.ndarray, y: np.ndarray, w: np.ndarray,
          idx: np.ndarray) -> pl.DataFrame:
    """Rows ``date, code, pred, target`` of the dates ``idx``."""
    n_stocks = x.shape[1]
    return pl.DataFrame({
        "date": np.repeat(dates[idx], n_stocks).astype("datetime64[D]"),
        "code": np.tile([f"S{i:03d}" for i in range(n_stocks)], len(idx)),
        "pred": (x[idx] @ w).reshape(-1).astype(np.float64),
        "target": y[idx].reshape(-1).astype(np.float64)})


def train(config: RankConfig, ctx: TrialContext) -> dict[str, float]:
    dates, x, y = panel(config)
    parts = split(config)
    xt, yt = x[parts["train"]].reshape(-1, len(FEATURES)), y[parts["train"]].reshape(-1)
    yt = yt / yt.std()
    w = np.zeros(len(FEATURES))
    ctx.set_attr(DATE_SPLIT, ranges(config, dates))
    for epoch in range(1, config.epochs + 1):
        grad = 2 * xt.T @ (xt @ w - yt) / len(yt) + 2 * config.l2 * w
        w = w - config.lr * grad
        val = frame(dates, x, y, w, parts["val"])
        scored, _ = ranking_score(val)
        metrics = {"sharpe": scored["sharpe"]["value"], "rank_ic": scored["rank_ic"]["value"],
                   "val_loss": float(np.mean((val["pred"].to_numpy()
                                              - val["target"].to_numpy() / y.std()) ** 2))}
        ctx.report(epoch, metrics)
    val.write_parquet(ctx.output_dir / VALIDATION_PREDICTIONS)
    atomic_write_json(ctx.output_dir / MODEL_FILE,
                      {"config": dataclasses.asdict(config), "w": w.tolist()})
    return {k: (v if math.isfinite(v) else math.nan) for k, v in metrics.items()}


@dataclass(frozen=True)
class Trained:
    config: RankConfig
    w: np.ndarray


def load(trial_dir: Path) -> Trained:
    path = Path(trial_dir) / MODEL_FILE
    if not path.is_file():
        raise UserError(f"no {MODEL_FILE} in {trial_dir}")
    saved = json.loads(path.read_text())
    return Trained(RankConfig(**saved["config"]), np.asarray(saved["w"]))


def check(trained: Trained) -> None:
    if trained.config.test_fraction <= 0:
        raise UserError("holds out no test period (test_fraction = 0)")


def predict(trial_dir: Path, trained: Trained, cache_dir: Path) -> Prediction:
    dates, x, y = panel(trained.config)
    parts = split(trained.config)
    return Prediction(frame=frame(dates, x, y, trained.w, parts["test"]),
                      split=ranges(trained.config, dates),
                      dates={"validation": dates[parts["val"]], "test": dates[parts["test"]]})


def baselines(trained: Trained, prediction: Prediction) -> dict[str, Any]:
    """The signal feature alone, scored like the trials."""
    dates, x, y = panel(trained.config)
    parts = split(trained.config)
    one = np.array([1.0, 0.0, 0.0])
    out = {}
    for period, key in (("validation", "val"), ("test", "test")):
        scored, _ = ranking_score(frame(dates, x, y, one, parts[key]))
        out[period] = {"signal_feature": {**scored, "label": "feature +f_signal"}}
    return out


class ToyHeldOut(HeldOut):
    """The protocol's required steps, plus moments and the signal-feature baseline."""

    def load(self, trial_dir: Path) -> Trained:
        return load(trial_dir)

    def digest(self, trial_dir: Path) -> str:
        return file_digest(Path(trial_dir) / MODEL_FILE)

    def check(self, trained: Trained) -> None:
        check(trained)

    def predict(self, trial_dir: Path, trained: Trained, cache_dir: Path) -> Prediction:
        return predict(trial_dir, trained, cache_dir)

    def score(self, frame, trained):  # noqa: ANN001, ANN201
        return ranking_score(frame)

    def moments(self, frame, trained, *, net: bool = False):  # noqa: ANN001, ANN201
        return ranking_moments(frame, net=net)

    def baselines(self, trained: Trained, prediction: Prediction) -> dict[str, Any]:
        return baselines(trained, prediction)


HELDOUT = ToyHeldOut()

WORKLOAD = Workload(name="toy_heldout", config_cls=RankConfig, train=train,
                    metrics={"sharpe": "maximize", "rank_ic": "maximize",
                             "val_loss": "minimize"},
                    description="Linear ranker on a seeded panel with a test period (tests).",
                    heldout=HELDOUT)
