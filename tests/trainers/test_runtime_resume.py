"""trainers.runtime.resume: the one checkpoint/resume path of every recipe."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from trainers.config import to_mapping
from trainers.context import TrialContext
from trainers.errors import UserError
from trainers.runtime import RuntimeConfig, StepRunner, resume, save_checkpoint


@dataclasses.dataclass(frozen=True)
class Settings(RuntimeConfig):
    """A workload config: the runtime's settings plus one of its own."""

    width: int = 8


def runner_for(ctx: TrialContext | None, config: Settings) -> StepRunner:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, config.width), torch.nn.Tanh(),
                                torch.nn.Linear(config.width, 1))
    return StepRunner(model, config.runtime(), ctx=ctx, total_steps=4, batch_size=16)


def one_step(runner: StepRunner) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
    runner.step(16, lambda s: F.mse_loss(runner.model(x[s]), y[s]))


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


CONFIG = Settings(device="cpu", lr=0.01)


def test_a_fresh_run_starts_at_epoch_0_with_the_given_extra_state(tmp_path) -> None:
    ctx = TrialContext(tmp_path)
    runner = runner_for(ctx, CONFIG)
    assert resume(runner, ctx, config=CONFIG) == (0, {})
    assert resume(runner, ctx, config=CONFIG, extra={"best": -1.0}) == (0, {"best": -1.0})
    assert runner.step_count == 0


def test_saved_epoch_runner_and_extra_state_come_back(tmp_path) -> None:
    ctx = TrialContext(tmp_path)
    runner = runner_for(ctx, CONFIG)
    one_step(runner)
    ctx.report(1, {"loss": 0.5})
    save_checkpoint(runner, ctx, config=CONFIG, epoch=1, extra={"best": 0.25, "seconds": 3.0})
    state = torch.load(ctx.checkpoint_path, weights_only=False)
    assert set(state) == {"runner", "config", "best", "seconds", "epoch", "history"}
    assert state["config"] == to_mapping(CONFIG)

    again_ctx = TrialContext(tmp_path)
    again = runner_for(again_ctx, CONFIG)
    start, saved = resume(again, again_ctx, config=CONFIG, extra={"best": None, "seconds": 0.0})
    assert (start, saved) == (1, {"best": 0.25, "seconds": 3.0})
    assert again.step_count == 1 and again.optimizer_steps == 1
    assert again_ctx.history == [{"epoch": 1, "loss": 0.5}]
    for a, b in zip(again.module.parameters(), runner.module.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_checkpoint_of_the_retried_trial_is_resumed(tmp_path) -> None:
    first = TrialContext(tmp_path / "trial_0")
    runner = runner_for(first, CONFIG)
    one_step(runner)
    save_checkpoint(runner, first, config=CONFIG, epoch=1)
    retry = TrialContext(tmp_path / "trial_1", resume_dir=tmp_path / "trial_0")
    assert resume(runner_for(retry, CONFIG), retry, config=CONFIG)[0] == 1


def test_atft_gats_earlier_flat_layout_still_resumes(tmp_path) -> None:
    """Before this module, atft_gat saved the runner's state at the top of its checkpoint."""
    ctx = TrialContext(tmp_path)
    runner = runner_for(ctx, CONFIG)
    one_step(runner)
    ctx.checkpoint({**runner.state_dict(), "config": to_mapping(CONFIG), "best": {"ic": 0.1},
                    "stale": 2}, epoch=3)
    again = runner_for(ctx, CONFIG)
    start, saved = resume(again, ctx, config=CONFIG, extra={"best": None, "stale": 0})
    assert (start, saved) == (3, {"best": {"ic": 0.1}, "stale": 2})
    assert again.step_count == 1


def test_other_settings_are_refused_but_a_setting_added_since_takes_its_default(tmp_path) -> None:
    ctx = TrialContext(tmp_path)
    runner = runner_for(ctx, CONFIG)
    save_checkpoint(runner, ctx, config=CONFIG, epoch=1)
    changed = dataclasses.replace(CONFIG, lr=0.02)
    with pytest.raises(UserError, match=r"other settings \(lr: 0.01 -> 0.02\)"):
        resume(runner_for(ctx, changed), ctx, config=changed)
    # A checkpoint from before ``width`` existed ran with its default: it continues ...
    state = torch.load(ctx.checkpoint_path, weights_only=False)
    del state["config"]["width"]
    ctx.checkpoint(state, epoch=1)
    assert resume(runner_for(ctx, CONFIG), ctx, config=CONFIG)[0] == 1
    # ... under that default only.
    wider = dataclasses.replace(CONFIG, width=16)
    with pytest.raises(UserError, match=r"other settings \(width: 8 -> 16\)"):
        resume(runner_for(ctx, wider), ctx, config=wider)


def test_extra_state_a_checkpoint_lacks_or_that_clashes_is_an_error(tmp_path) -> None:
    ctx = TrialContext(tmp_path)
    runner = runner_for(ctx, CONFIG)
    with pytest.raises(ValueError, match="may not be named epoch"):
        save_checkpoint(runner, ctx, config=CONFIG, epoch=1, extra={"epoch": 2})
    save_checkpoint(runner, ctx, config=CONFIG, epoch=1)
    with pytest.raises(UserError, match="has no train_tokens; it was written by another recipe"):
        resume(runner, ctx, config=CONFIG, extra={"train_tokens": 0})
