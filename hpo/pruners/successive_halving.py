"""``successive_halving``: Optuna's asynchronous successive halving, for a single objective.

Rungs are at epochs ``min_resource * reduction_factor**(min_early_stopping_rate + k)``; a
trial reaching one goes on only in the top ``1 / reduction_factor`` of the trials there.
"""

from __future__ import annotations

from typing import Any

import optuna

from hpo.pruners._base import Key, PrunerKind

MIN_RESOURCE = Key("min_resource", 1, 1)  # epochs of the first rung
REDUCTION_FACTOR = Key("reduction_factor", 3, 2)  # rung spacing and 1 / share kept
# trials that must have reached a rung before anyone is judged there
BOOTSTRAP_COUNT = Key("bootstrap_count", 0, 0)
KEYS = (MIN_RESOURCE, REDUCTION_FACTOR, Key("min_early_stopping_rate", 0, 0), BOOTSTRAP_COUNT)


def build(spec: Any) -> optuna.pruners.BasePruner:
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=spec.min_resource, reduction_factor=spec.reduction_factor,
        min_early_stopping_rate=spec.min_early_stopping_rate,
        bootstrap_count=spec.bootstrap_count)


# Optuna judges a rung once ``step >= min_resource * ...``, "after the trial executes that
# many steps": epoch e is step e, so the rungs are at those epochs.
KIND = PrunerKind(name="successive_halving", keys=KEYS, build=build, single_objective=True,
                  first_step=1)
