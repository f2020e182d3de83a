"""A tiny but real workload for the study machinery's tests: gradient descent on a quadratic.

It trains in milliseconds, reports per-epoch metrics, checkpoints every epoch and can be told
to sleep, fail, diverge or stop mid-run, so the tests exercise hpo.* exactly as a GPU trainer
would, without waiting for one.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

from trainers.context import TrialContext
from trainers.errors import StopRequested, TrialFailed, TrialPruned, UserError
from trainers.registry import Workload


@dataclass(frozen=True)
class ToyConfig:
    x0: float = 3.0            # starting point of the descent
    lr: float = 0.1
    epochs: int = 3
    optimizer: str = "sgd"     # "sgd" | "momentum"
    width: int = 1             # scales the objective, so an int parameter changes the result
    sleep_s: float = 0.0       # per epoch, to make trials overlap in worker tests
    steps: int = 0             # > 0: the epoch's sleep is cut into this many progress steps
    fail_on_width: int = -1    # raise TrialFailed when width equals this
    diverge: bool = False      # return a NaN loss
    payload_kb: int = 0        # extra bytes in each checkpoint (to fill a small disk)

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "momentum"):
            raise UserError(f"optimizer must be 'sgd' or 'momentum', got {self.optimizer!r}")
        if self.epochs < 1:
            raise UserError(f"epochs must be >= 1, got {self.epochs}")


def train(config: ToyConfig, ctx: TrialContext) -> dict[str, float]:
    x, velocity, start = config.x0, 0.0, 0
    state = ctx.restore()
    if state is not None:
        x, velocity, start = state["x"], state["velocity"], state["epoch"]
    if config.fail_on_width == config.width:
        raise TrialFailed(f"width {config.width} is configured to fail")
    stop_after = int(os.environ.get("TOY_STOP_AFTER_EPOCH", "-1"))
    for epoch in range(start, config.epochs):
        if ctx.should_stop():
            raise StopRequested(ctx.should_stop())
        grad = 2 * x
        velocity = (0.9 * velocity if config.optimizer == "momentum" else 0.0) + grad
        x -= config.lr * velocity
        loss = config.width * x * x
        if config.diverge:
            raise TrialPruned(f"loss became nan at step {epoch}")
        ctx.report(epoch + 1, {"loss": loss, "score": -math.log1p(loss), "x": x})
        ctx.checkpoint({"x": x, "velocity": velocity,
                        "payload": os.urandom(config.payload_kb * 1024)}, epoch=epoch + 1)
        if config.steps > 0:
            with ctx.phase("train", total=config.steps, unit="steps", epoch=epoch + 1,
                           epochs=config.epochs) as progress:
                for _ in range(config.steps):
                    time.sleep(config.sleep_s / config.steps)
                    progress.advance()
        else:
            time.sleep(config.sleep_s)
        if epoch + 1 == stop_after:
            ctx.request_stop("SIGTERM")
    ctx.set_attr("optimizer_class", config.optimizer)
    return {"loss": loss, "score": -math.log1p(loss), "x": x}


WORKLOAD = Workload(name="toy", config_cls=ToyConfig, train=train,
                    metrics={"loss": "minimize", "score": "maximize", "x": "minimize"},
                    description="Gradient descent on width * x^2 (test workload).")

# The toy's search space as a study file writes it (tests add it to their study files).
SPACE_TOML = """[search_space.lr]
type = "float"
low = 0.01
high = 0.5
log = true
[search_space.width]
type = "int"
low = 1
high = 4
[search_space.optimizer]
type = "categorical"
choices = ["sgd", "momentum"]
"""
