"""A tiny walk-forward workload for the fold-pruning tests: each fold's score is the
configuration's ``quality`` plus that fold's difficulty, known in advance.

It reports as a walk-forward trainer does (``trainers.atft_gat.walk_forward``): once per
fold, the running mean as the objective and the fold's own figure as its ``instance``, and the
finished folds in the attr ``fold_metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainers.context import TrialContext
from trainers.registry import Workload

# How hard each fold is: the same for every configuration, so folds pair across trials.
DIFFICULTY = (0.0, 0.3, -0.2, 0.1, 0.05, -0.1)


@dataclass(frozen=True)
class FoldConfig:
    quality: float = 0.0
    cv_folds: int = 4


def train(config: FoldConfig, ctx: TrialContext) -> dict[str, float]:
    done: list[dict[str, float]] = []
    for k in range(config.cv_folds):
        own = config.quality + DIFFICULTY[k]
        done.append({"fold": k + 1, "score": own})
        ctx.set_attr("fold_metrics", done)
        running = sum(d["score"] for d in done) / len(done)
        ctx.report(k + 1, {"score": running}, instance={"score": own})
    return {"score": running}


# The contract a walk-forward workload states (trainers.registry.Workload): it reports once
# per fold, so its pruners' steps are its folds.
WORKLOAD = Workload(name="toy_folds", config_cls=FoldConfig, train=train,
                    metrics={"score": "maximize"}, steps=lambda config: config.cv_folds,
                    description="Per-fold scores known in advance (test workload).")
