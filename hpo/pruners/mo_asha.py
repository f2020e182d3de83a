"""``mo_asha``: multi-objective asynchronous successive halving, for any number of objectives.

Optuna has no multi-objective pruner (``trial.report`` refuses such studies), so Optuna gets a
NopPruner and the objective applies the rule itself at each rung: :class:`hpo.pruning.MOASHA`
over the per-epoch objective vectors every trial stores.
"""

from __future__ import annotations

from typing import Any

import optuna

from hpo.pruners._base import Key, PrunerKind

KEYS = (
    Key("min_epochs", 1, 1),  # the first rung; rungs at min_epochs * eta**k
    Key("eta", 3, 2),  # rung spacing; the top 1 / eta at a rung go on
    Key("min_trials_at_rung", 3, 1),  # with fewer trials at a rung, the trial goes on
)


def build(spec: Any) -> optuna.pruners.BasePruner:
    return optuna.pruners.NopPruner()


KIND = PrunerKind(name="mo_asha", keys=KEYS, build=build, single_objective=False)
