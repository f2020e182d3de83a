"""A walk-forward trial: one model per fold, objectives over every fold's validation rows,
nothing read from the test period, resumed inside a fold after a kill."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import trainers.atft_gat.train as train_module
from tests.trainers.atft_gat.test_train import TINY
from trainers.atft_gat import WORKLOAD
from trainers.atft_gat.config import TrainConfig
from trainers.atft_gat.data import study_split
from trainers.atft_gat.synthetic import generate_market
from trainers.context import TrialContext
from trainers.metrics import Scoring, panel_metrics

WF = {**TINY, "n_dates": 220, "epochs": 2, "cv": "walk_forward", "cv_folds": 3}


def _run(folder: Path, **overrides) -> tuple[dict, TrialContext]:
    torch.set_num_threads(1)
    ctx = TrialContext(folder, seed=0, cache_dir=folder.parent / "cache")
    return WORKLOAD.train(TrainConfig(**{**WF, **overrides}), ctx), ctx


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, TrialContext]:
    return _run(tmp_path_factory.mktemp("wf") / "trial")


def test_objectives_recompute_from_the_predictions_of_every_fold(ran) -> None:
    metrics, ctx = ran
    preds = pl.read_parquet(ctx.output_dir / "predictions.parquet")
    assert preds.columns == ["date", "code", "pred", "target", "fold"]
    assert preds["fold"].unique().sort().to_list() == [1, 2, 3]
    scoring = Scoring(horizon=1, cost_bps=TrainConfig(**WF).cost_bps, periods_per_year=252)

    def figures(rows: pl.DataFrame) -> dict[str, float]:
        return panel_metrics(rows["date"].to_numpy(), rows["pred"].to_numpy(),
                             rows["target"].to_numpy(), codes=rows["code"].to_numpy(),
                             scoring=scoring)

    again = figures(preds)
    for name in ("rank_ic", "sharpe", "sharpe_net", "turnover", "ic"):
        assert metrics[name] == pytest.approx(again[name], abs=1e-12), name
    per_fold = ctx.attrs["fold_metrics"]
    for fold in per_fold:
        own = figures(preds.filter(pl.col("fold") == fold["fold"]))
        assert fold["rank_ic"] == pytest.approx(own["rank_ic"], abs=1e-12)
        assert fold["epochs"] == 2
    # val_loss is the folds' date-weighted mean; the trial reported once per fold
    n = [preds.filter(pl.col("fold") == f)["date"].n_unique() for f in (1, 2, 3)]
    assert metrics["val_loss"] == pytest.approx(
        np.average([f["val_loss"] for f in per_fold], weights=n), abs=1e-12
    )
    assert [h["epoch"] for h in ctx.history] == [1, 2, 3]
    assert ctx.history[0]["instance"]["rank_ic"] == pytest.approx(per_fold[0]["rank_ic"])
    assert ctx.history[-1]["rank_ic"] == pytest.approx(metrics["rank_ic"])


def test_the_folds_attr_names_each_folds_dates(ran) -> None:
    _, ctx = ran
    config = TrainConfig(**WF)
    market = generate_market(n_stocks=24, n_dates=220, seed=0)
    dates = market["date"].unique().sort().to_numpy().astype("datetime64[D]")
    split = study_split(config, dates)
    assert ctx.attrs["folds"] == [f.ranges(dates) for f in split.folds]
    preds = pl.read_parquet(ctx.output_dir / "predictions.parquet")
    for k, fold in enumerate(ctx.attrs["folds"], start=1):
        rows = preds.filter(pl.col("fold") == k)["date"]
        assert [str(rows.min()), str(rows.max())] == fold["validation"]
    assert ctx.attrs["date_split"]["folds"] == ctx.attrs["folds"]


def test_every_fold_reads_only_dates_before_its_block_and_the_test_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Record, per batch, the dates a training step reads and the panel it was cut from."""
    seen: list[tuple[str, np.datetime64, np.ndarray]] = []
    make_batch = train_module.make_batch

    def recording(panel, y_z, graphs, dates, *, lookback, with_graph):
        seen.append((panel.dates[-1], panel.dates[np.asarray(dates)]))
        return make_batch(panel, y_z, graphs, dates, lookback=lookback, with_graph=with_graph)

    monkeypatch.setattr(train_module, "make_batch", recording)
    _, ctx = _run(tmp_path / "rec", epochs=1)
    folds = ctx.attrs["folds"]
    test_start = np.datetime64(ctx.attrs["date_split"]["test"][0])
    ends = sorted({str(end) for end, _ in seen})
    # each fold's panel is cut after its own block
    assert ends == sorted({f["validation"][1] for f in folds})
    for end, dates in seen:
        assert np.max(dates) <= end < test_start
        fold = next(f for f in folds if f["validation"][1] == str(end))
        training = dates <= np.datetime64(fold["train"][1])
        scored = dates >= np.datetime64(fold["validation"][0])
        assert np.all(training | scored)  # nothing from the purge gap


class Killed(Exception):
    pass


class KilledAfter(TrialContext):
    """Dies after writing its n-th checkpoint, as a killed worker would."""

    def __init__(self, *args, after: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.after = after
        self.written = 0

    def checkpoint(self, state, *, epoch: int) -> None:
        super().checkpoint(state, epoch=epoch)
        self.written += 1
        if self.written == self.after:
            raise Killed


# Checkpoints: fold 1 epochs 1-2 (1, 2), fold 1 done (3), fold 2 epoch 1 (4), ...
@pytest.mark.parametrize("after", [2, 3, 4])
def test_a_killed_trial_resumes_inside_its_fold_to_the_uninterrupted_values(
    ran, tmp_path: Path, after: int
) -> None:
    metrics, ctx = ran
    torch.set_num_threads(1)
    config = TrainConfig(**WF)
    folder = tmp_path / "killed"
    with pytest.raises(Killed):
        WORKLOAD.train(config, KilledAfter(folder, seed=0, cache_dir=ctx.cache_dir, after=after))
    if after == 3:  # fold 1 finished: its rows are on disk, as a pruned trial keeps them
        kept = pl.read_parquet(folder / "predictions.parquet")
        assert kept["fold"].unique().to_list() == [1]
    again = TrialContext(folder, seed=0, cache_dir=ctx.cache_dir)
    resumed = WORKLOAD.train(config, again)
    assert resumed == metrics
    assert pl.read_parquet(folder / "predictions.parquet").equals(
        pl.read_parquet(ctx.output_dir / "predictions.parquet")
    )
    first = torch.load(ctx.output_dir / "model.pt", weights_only=False)["model"]
    second = torch.load(folder / "model.pt", weights_only=False)["model"]
    assert all(torch.equal(first[k], second[k]) for k in first)
