"""Checkpoint and resume: the one way a recipe saves its epochs and continues from them.

A recipe that has built its :class:`~trainers.runtime.StepRunner` calls::

    start_epoch, saved = resume(runner, ctx, config=config, extra={"train_seconds": 0.0})
    for epoch in range(start_epoch, epochs):
        ...train, validate, ctx.report...
        save_checkpoint(runner, ctx, config=config, epoch=epoch + 1,
                        extra={"train_seconds": train_seconds})

``resume`` reads the newest checkpoint of this run, else of the trial it retries
(``ctx.restore``), refuses one written with other settings, and puts model, optimizer,
scheduler, GradScaler, step counters, micro-batch and RNG state back
(``StepRunner.load_state_dict``); the epoch history comes back into ``ctx.history``.
``extra`` is the recipe's own running state beside the runner (best epoch so far, timers):
its names and their values at a fresh start.

On disk a checkpoint is ``{"runner": runner.state_dict(), "config": the resolved config,
**extra, "epoch": epochs completed, "history": ctx.history}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from trainers.config import to_mapping
from trainers.context import TrialContext, check_resumable
from trainers.errors import UserError

if TYPE_CHECKING:
    from trainers.runtime.step import StepRunner

# Keys of a checkpoint that are not the recipe's extra state.
RESERVED_KEYS = frozenset({"runner", "config", "epoch", "history"})


def resume(runner: StepRunner, ctx: TrialContext, *, config: Any,
           extra: Mapping[str, Any] | None = None,
           optional: Mapping[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """Continue from the newest checkpoint, if there is one.

    Returns the number of epochs already completed (0 for a fresh start: the first epoch to
    run) and the recipe's extra state: each name of ``extra`` with its saved value, or with
    the value ``extra`` gives when there is nothing to resume; each name of ``optional`` the
    same, its default also standing in for a checkpoint written without it.

    Raises:
        UserError: the checkpoint was written with other run settings (machine settings
            such as ``device`` may differ), or lacks one of the ``extra`` names.
    """
    state, saved = resume_state(ctx, config=config, extra=extra, optional=optional)
    if state is None:
        return 0, saved
    return load_runner(runner, state), saved


def resume_state(ctx: TrialContext, *, config: Any, extra: Mapping[str, Any] | None = None,
                 optional: Mapping[str, Any] | None = None
                 ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``resume`` in two steps, for a recipe that needs its saved state before it can build
    the runner (a walk-forward trial builds fold k's model): the newest checkpoint, checked
    against ``config`` (None when there is none), and the recipe's ``extra`` / ``optional``
    state as ``resume`` returns it. ``load_runner`` then puts the runner back."""
    fresh = dict(extra or {})
    maybe = dict(optional or {})
    state = ctx.restore()
    if state is None or "epoch" not in state:
        return None, {**fresh, **maybe}
    check_resumable({**state, "config": _saved_settings(state, config)}, config, ctx)
    missing = sorted(set(fresh) - set(state))
    if missing:
        raise UserError(f"the checkpoint in {ctx.output_dir} has no {', '.join(missing)}; it "
                        "was written by another recipe: use a fresh output directory")
    return state, {**{name: state[name] for name in fresh},
                   **{name: state.get(name, default) for name, default in maybe.items()}}


def load_runner(runner: StepRunner, state: Mapping[str, Any]) -> int:
    """Put ``state``'s runner back (model, optimizer, scheduler, scaler, counters, RNG);
    returns the epochs it had completed (``ctx.restore`` logged where the run continues)."""
    # Checkpoints of atft_gat written before this module kept the runner's state at the top.
    runner.load_state_dict(state["runner"] if "runner" in state else state)
    return int(state["epoch"])


def save_checkpoint(runner: StepRunner | None, ctx: TrialContext, *, config: Any, epoch: int,
                    extra: Mapping[str, Any] | None = None) -> None:
    """Save everything an exact resume after ``epoch`` completed epochs needs, atomically:
    the runner's state, the resolved config (to refuse a resume with other settings) and the
    recipe's ``extra`` state (see :func:`resume`). ``runner`` None: a checkpoint between two
    models (a walk-forward trial between folds), whose next model starts fresh."""
    extra = dict(extra or {})
    clash = sorted(RESERVED_KEYS & set(extra))
    if clash:
        raise ValueError(f"extra state may not be named {', '.join(clash)}; those keys are the "
                         "checkpoint's own")
    runner_state = {"runner": runner.state_dict()} if runner is not None else {}
    ctx.checkpoint({**runner_state, "config": to_mapping(config), **extra}, epoch=epoch)


def _saved_settings(state: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """The settings a checkpoint was written with. A setting added to the config since then
    is taken at its default: that is what the run it continues used, before it existed."""
    saved = dict(state.get("config") or {})
    if not saved:
        return saved  # nothing recorded: nothing to compare
    for f in dataclasses.fields(config):
        if f.name not in saved and f.default is not dataclasses.MISSING:
            saved[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
    return saved


@dataclasses.dataclass
class EpochPart:
    """How far a recipe got inside epoch ``epoch`` (0-based): the runtime steps it ran and the
    running state it keeps across them (loss sums, token counts, a generator's state). A step
    checkpoint saves it under ``partial``; :func:`resume_part` gives it back to the epoch it
    belongs to, whose first ``steps`` steps the recipe then skips (its batch order depends on
    the seed and the epoch only, so the rest replays exactly)."""

    epoch: int
    steps: int = 0
    state: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "steps": self.steps, "state": dict(self.state)}


def resume_part(saved: Mapping[str, Any], epoch: int) -> EpochPart:
    """The part of ``epoch`` a step checkpoint holds (``resume(..., optional=PARTIAL)``'s
    ``partial``), or a fresh one when the checkpoint was written at an epoch's end."""
    partial = saved.get("partial")
    if isinstance(partial, Mapping) and int(partial.get("epoch", -1)) == epoch:
        return EpochPart(epoch=epoch, steps=int(partial["steps"]),
                         state=dict(partial.get("state") or {}))
    return EpochPart(epoch=epoch)


# The optional checkpoint entry of a recipe that resumes mid-epoch (``resume``'s ``optional``).
PARTIAL = {"partial": None}


def step_boundary(runner: StepRunner, ctx: TrialContext, *, config: Any, part: EpochPart,
                  extra: Mapping[str, Any] | None = None) -> None:
    """Call before each runtime step inside an epoch: on a stop request (SIGTERM, Ctrl-C) or
    when ``checkpoint_every_s`` has passed, save a step checkpoint holding the runner at this
    step and ``part`` (and the recipe's ``extra`` epoch-end state), then stop on a request.
    A resumed run continues at this very step and ends with the uninterrupted values."""
    from trainers.errors import StopRequested

    reason = ctx.should_stop()
    if reason or ctx.checkpoint_due():
        save_checkpoint(runner, ctx, config=config, epoch=part.epoch,
                        extra={**(extra or {}), "partial": part.to_state()})
    if reason:
        raise StopRequested(reason)
