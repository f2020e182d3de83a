"""condor, lm and denoise resume mid-epoch: a stop (SIGTERM, Ctrl-C) at a step inside epoch 2
saves a step checkpoint there (``trainers.runtime.step_boundary``), and the resumed run ends
with the weights and metrics of an uninterrupted one; ``checkpoint_every_s`` writes the same
step checkpoints on a timer."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch

from trainers.context import TrialContext
from trainers.errors import StopRequested

# Two epochs each, several steps per epoch; the stop comes at step 3 of epoch 2.
CASES = {
    "condor": dict(n_paths=2, n_days=600, seq_len=8, horizon=20, ivr_window=126, d_model=8,
                   layers=1, d_state=2, epochs=2, batch_size=128, lr=3e-3, warmup_steps=2,
                   device="cpu"),
    "lm": dict(corpus_max_bytes=100_000, d_model=16, layers=1, heads=2, block_size=16,
               batch_size=4, epochs=2, iters_per_epoch=6, eval_windows=4, lr=3e-3,
               warmup_steps=2, device="cpu"),
    "denoise": dict(d=16, hidden=32, n_train=512, n_test=256, epochs=2, batch_size=64,
                    lr=0.02, noise_var=0.05, device="cpu"),
}
# Wall-clock figures: they differ between any two runs.
TIMED = {"tokens_per_s", "train_seconds"}


class StopAt(TrialContext):
    """Asks to stop (as SIGTERM does) at its n-th look, once."""

    def __init__(self, *args: Any, at: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.at, self.looks = at, 0

    def should_stop(self) -> str | None:
        self.looks += 1
        return "SIGTERM" if self.looks == self.at else super().should_stop()


def _workload(name: str) -> tuple[Any, Any]:
    package = importlib.import_module(f"trainers.{name}")
    return package.WORKLOAD, package.WORKLOAD.config_cls


def _steps_per_epoch(name: str, tmp_path: Path) -> int:
    """Looks at should_stop in epoch 1 (one per step), counted on a one-epoch run."""
    workload, config_cls = _workload(name)
    counter = StopAt(tmp_path / "count", seed=1, at=-1)
    workload.train(config_cls(**{**CASES[name], "epochs": 1}), counter)
    return counter.looks


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return torch.load(directory / "checkpoint.pt", weights_only=False)["runner"]["model"]


@pytest.mark.parametrize("name", list(CASES))
def test_a_stop_inside_epoch_2_resumes_to_the_uninterrupted_values(
        name: str, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    workload, config_cls = _workload(name)
    config = config_cls(**CASES[name])
    per_epoch = _steps_per_epoch(name, tmp_path)
    assert per_epoch >= 4
    whole = workload.train(config, TrialContext(tmp_path / "whole", seed=1))

    stopped = StopAt(tmp_path / "cut", seed=1, at=per_epoch + 3)  # before step 3 of epoch 2
    with pytest.raises(StopRequested, match="SIGTERM"):
        workload.train(config, stopped)
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert saved["epoch"] == 1 and saved["partial"]["epoch"] == 1
    assert 1 <= saved["partial"]["steps"] < per_epoch  # it stopped inside epoch 2

    again = TrialContext(tmp_path / "cut", seed=1)
    resumed = workload.train(config, again)
    assert {k: v for k, v in resumed.items() if k not in TIMED} == \
        {k: v for k, v in whole.items() if k not in TIMED}
    first, second = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_checkpoint_every_s_writes_step_checkpoints(tmp_path: Path) -> None:
    """With a timer of 0 s, every step writes a step checkpoint; the newest holds the last
    step's place."""
    workload, config_cls = _workload("denoise")
    written: list[int] = []

    class Every(TrialContext):
        def checkpoint_due(self) -> bool:
            return True

        def checkpoint(self, state: dict, *, epoch: int) -> None:
            super().checkpoint(state, epoch=epoch)
            if state.get("partial"):
                written.append(int(state["partial"]["steps"]))

    workload.train(config_cls(**{**CASES["denoise"], "epochs": 1}), Every(tmp_path / "e"))
    assert written == list(range(len(written))) and len(written) >= 4
