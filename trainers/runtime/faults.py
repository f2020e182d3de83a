"""Fault injection for :class:`~trainers.runtime.StepRunner`, driven by the environment.

Read when a StepRunner is built, so each trial sees the value set for it:

* ``HPO_INJECT_OOM_ABOVE_BATCH=<n>``: every chunk of more than ``n`` samples raises a
  genuine ``torch.OutOfMemoryError`` (the class CUDA raises; it can be built on any
  device) right after its forward pass, while the chunk's autograd graph is alive, so the
  retry path (free, halve, redo) runs on the CPU exactly as on a GPU.
* ``HPO_INJECT_NAN_AT_STEP=<k>``: the loss of step ``k`` (1-based count of ``step()``
  calls, the unit of ``step_count`` and of every message) becomes NaN.
* ``HPO_INJECT_TRIALS=<i,j,...>``: optional; the two above apply only to those trials.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from trainers.context import TrialContext
from trainers.errors import UserError

INJECT_OOM_ENV = "HPO_INJECT_OOM_ABOVE_BATCH"
INJECT_NAN_ENV = "HPO_INJECT_NAN_AT_STEP"
# Optional comma-separated trial numbers: injections apply only to those trials, so a test can
# break one trial of a study and watch the study carry on.
INJECT_TRIALS_ENV = "HPO_INJECT_TRIALS"


@dataclass(frozen=True)
class FaultInjection:
    """The faults one run injects; ``None`` injects nothing."""

    oom_above: int | None = None  # chunks of more samples than this run out of memory
    nan_at: int | None = None  # the 1-based step whose loss becomes NaN

    @classmethod
    def from_env(cls, ctx: TrialContext | None) -> FaultInjection:
        """The faults the environment asks for this trial (``ctx`` gives its number).

        Raises:
            UserError: a variable is set to something else than what the module docstring
                allows.
        """
        faults = cls(_env_int(INJECT_OOM_ENV, minimum=1), _env_int(INJECT_NAN_ENV, minimum=1))
        return faults if _injection_targets(ctx) else cls()

    def describe(self) -> list[str]:
        """One log line per active injection."""
        lines = []
        if self.oom_above is not None:
            lines.append(f"fault injection: out of memory above micro-batch {self.oom_above}")
        if self.nan_at is not None:
            lines.append(f"fault injection: NaN loss at step {self.nan_at}")
        return lines

    def exceeds(self, chunk: int) -> bool:
        """Whether a chunk of ``chunk`` samples must run out of memory."""
        return self.oom_above is not None and chunk > self.oom_above

    def out_of_memory(self, what: str) -> torch.OutOfMemoryError:
        """The error to raise for an injected out-of-memory on ``what`` (e.g. "chunk of 8
        samples at step 3")."""
        return torch.OutOfMemoryError(
            f"out of memory (injected by {INJECT_OOM_ENV}={self.oom_above}): {what}"
        )


def _injection_targets(ctx: TrialContext | None) -> bool:
    """Whether fault injection applies to this run (see ``INJECT_TRIALS_ENV``)."""
    raw = os.environ.get(INJECT_TRIALS_ENV, "").strip()
    if not raw:
        return True
    try:
        trials = {int(x) for x in raw.split(",") if x.strip()}
    except ValueError:
        raise UserError(f"{INJECT_TRIALS_ENV}={raw!r} must be comma-separated trial numbers, "
                        "e.g. 0,3") from None
    return ctx is not None and ctx.trial_number in trials


def _env_int(name: str, *, minimum: int) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise UserError(f"{name}={raw!r} is not allowed; give an integer >= {minimum} or unset it")
    return value
