"""``percentile``: Optuna's PercentilePruner, for a single objective.

The median pruner with another cut: ``percentile = 25.0`` keeps a trial only while its best
value so far is in the best quarter of the finished trials' values at the same epoch.
"""

from __future__ import annotations

from typing import Any

import optuna

from hpo.pruners import median
from hpo.pruners._base import Key, PrunerKind

KEYS = (Key("percentile", 25.0, 0, 100), *median.KEYS)


def build(spec: Any) -> optuna.pruners.BasePruner:
    return optuna.pruners.PercentilePruner(
        spec.percentile, n_startup_trials=spec.n_startup_trials,
        n_warmup_steps=spec.n_warmup_steps, interval_steps=spec.interval_steps,
        n_min_trials=spec.n_min_trials)


# Steps from 0, as for the median pruner (see hpo.pruners.median).
KIND = PrunerKind(name="percentile", keys=KEYS, build=build, single_objective=True,
                  first_step=median.KIND.first_step)
