"""Preemption that loses seconds: a stop inside an epoch (or during validation) checkpoints at
that step, and the resumed run ends with exactly the values of an uninterrupted one; periodic
step checkpoints bound what a kill loses."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch

from tests.trainers.atft_gat.test_train import TINY
from trainers.atft_gat import WORKLOAD
from trainers.atft_gat.config import TrainConfig
from trainers.context import TrialContext
from trainers.errors import StopRequested

# 6 steps an epoch, 2 epochs: room to stop inside one.
SETTINGS = {**TINY, "epochs": 2, "max_steps_per_epoch": 6, "batch_size": 24}


class StopAt(TrialContext):
    """Asks to stop (as SIGTERM does) at its n-th look, once."""

    def __init__(self, *args, at: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.at, self.looks = at, 0

    def should_stop(self) -> str | None:
        self.looks += 1
        return "SIGTERM" if self.looks == self.at else super().should_stop()


class Killed(Exception):
    pass


class KilledAfter(TrialContext):
    def __init__(self, *args, after: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.after, self.written = after, 0

    def checkpoint(self, state, *, epoch: int) -> None:
        super().checkpoint(state, epoch=epoch)
        self.written += 1
        if self.written == self.after:
            raise Killed


def _train(config: TrainConfig, ctx: TrialContext) -> dict:
    torch.set_num_threads(1)
    return WORKLOAD.train(config, ctx)


def _same_run(a: Path, b: Path) -> None:
    assert pl.read_parquet(a / "predictions.parquet").equals(
        pl.read_parquet(b / "predictions.parquet"))
    first = torch.load(a / "model.pt", weights_only=False)["model"]
    second = torch.load(b / "model.pt", weights_only=False)["model"]
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    root = tmp_path_factory.mktemp("preempt")
    ctx = TrialContext(root / "whole", seed=4, cache_dir=root / "cache")
    return _train(TrainConfig(**SETTINGS), ctx), ctx.output_dir, root / "cache"


# Looks 1-6: before each step of epoch 1; 7 on: its validation; then epoch 2.
@pytest.mark.parametrize("at", [3, 7, 11])
def test_a_stop_inside_an_epoch_resumes_at_that_step_to_the_same_values(
        whole, tmp_path: Path, at: int) -> None:
    metrics, whole_dir, cache = whole
    config = TrainConfig(**SETTINGS)
    stopped = StopAt(tmp_path / "t", seed=4, cache_dir=cache, at=at)
    with pytest.raises(StopRequested, match="SIGTERM"):
        _train(config, stopped)
    saved = torch.load(tmp_path / "t" / "checkpoint.pt", weights_only=False)
    partial = saved["partial"]
    assert partial is not None and partial["epoch"] == saved["epoch"]
    if at == 3:
        assert (saved["epoch"], len(partial["losses"])) == (0, 2)  # two steps kept
    if at == 7:
        assert (saved["epoch"], len(partial["losses"])) == (0, 6)  # the whole epoch kept
    resumed = TrialContext(tmp_path / "t", seed=4, cache_dir=cache)
    assert _train(config, resumed) == metrics
    _same_run(whole_dir, tmp_path / "t")


def test_periodic_step_checkpoints_bound_what_a_kill_loses(whole, tmp_path: Path) -> None:
    metrics, whole_dir, cache = whole
    config = TrainConfig(**SETTINGS)
    # every step checkpoints; killed right after the 4th (inside epoch 1)
    killed = KilledAfter(tmp_path / "k", seed=4, cache_dir=cache, after=4,
                         checkpoint_every_s=1e-9)
    with pytest.raises(Killed):
        _train(config, killed)
    saved = torch.load(tmp_path / "k" / "checkpoint.pt", weights_only=False)
    assert saved["epoch"] == 0 and len(saved["partial"]["losses"]) == 3
    resumed = TrialContext(tmp_path / "k", seed=4, cache_dir=cache)
    assert _train(config, resumed) == metrics
    _same_run(whole_dir, tmp_path / "k")


def test_a_walk_forward_fold_resumes_mid_epoch(tmp_path: Path) -> None:
    config = TrainConfig(**{**SETTINGS, "n_dates": 220, "cv": "walk_forward", "cv_folds": 3})
    cache = tmp_path / "cache"
    whole = TrialContext(tmp_path / "whole", seed=1, cache_dir=cache)
    metrics = _train(config, whole)
    # ~82 looks a fold (2 epochs of 6 steps, each validated date by date): inside fold 2
    stopped = StopAt(tmp_path / "t", seed=1, cache_dir=cache, at=126)  # of 246
    with pytest.raises(StopRequested):
        _train(config, stopped)
    saved = torch.load(tmp_path / "t" / "checkpoint.pt", weights_only=False)
    assert saved["walk_forward"]["fold"] == 1 and saved["partial"] is not None
    assert _train(config, TrialContext(tmp_path / "t", seed=1, cache_dir=cache)) == metrics
    _same_run(tmp_path / "whole", tmp_path / "t")
