"""``median``: Optuna's MedianPruner, for a single objective.

A trial whose best value so far is worse than the median of the finished trials' values at
the same epoch stops. Its four keys are the percentile family's (``percentile`` reuses them).
"""

from __future__ import annotations

from typing import Any

import optuna

from hpo.pruners._base import Key, PrunerKind

# Optuna's defaults, except n_warmup_steps: an epoch-1 value says little about a trainer.
KEYS = (
    Key("n_startup_trials", 5, 0),  # finished trials before anyone is pruned
    Key("n_warmup_steps", 1, 0),  # epochs never judged, the first ones
    Key("interval_steps", 1, 1),  # judge every this many epochs after the warm-up
    Key("n_min_trials", 1, 1),  # trials that must have reported an epoch to judge it
)


def build(spec: Any) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(
        n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps,
        interval_steps=spec.interval_steps, n_min_trials=spec.n_min_trials)


# Optuna's warm-up skips steps below n_warmup_steps, steps counting from 0 (its examples
# report ``for step in range(n)``): epoch e is step e - 1, so the first n_warmup_steps
# epochs are never judged.
KIND = PrunerKind(name="median", keys=KEYS, build=build, single_objective=True, first_step=0)
