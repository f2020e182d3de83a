"""``hyperband``: Optuna's HyperbandPruner, several successive-halving brackets, for a single
objective. Each bracket is a successive-halving pruner (see hpo.pruners.successive_halving)."""

from __future__ import annotations

from typing import Any

import optuna

from hpo.pruners import successive_halving as sh
from hpo.pruners._base import Key, PrunerKind

# max_resource 0 is Optuna's "auto": one more than the last step of the first finished trial
# (its number of epochs + 1, steps being epochs here).
KEYS = (sh.MIN_RESOURCE, Key("max_resource", 0, 0), sh.REDUCTION_FACTOR, sh.BOOTSTRAP_COUNT)


def build(spec: Any) -> optuna.pruners.BasePruner:
    return optuna.pruners.HyperbandPruner(
        min_resource=spec.min_resource, max_resource=spec.max_resource or "auto",
        reduction_factor=spec.reduction_factor, bootstrap_count=spec.bootstrap_count)


# Its brackets are successive-halving pruners: the same steps.
KIND = PrunerKind(name="hyperband", keys=KEYS, build=build, single_objective=True,
                  first_step=sh.KIND.first_step)
