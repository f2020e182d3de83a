"""``mo_asha``: multi-objective asynchronous successive halving, for any number of objectives.

Optuna has no multi-objective pruner (``trial.report`` and ``should_prune`` refuse such
studies), so the study's pruner is :class:`hpo.pruning.MOASHAPruner`, an Optuna pruner object
that owns the decision over the per-epoch objective vectors every trial stores; the objective
asks it at each epoch, as Optuna's ``should_prune`` would.
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
    from hpo.pruning import MOASHAPruner

    return MOASHAPruner(min_epochs=spec.min_epochs, eta=spec.eta,
                        min_trials_at_rung=spec.min_trials_at_rung)


KIND = PrunerKind(name="mo_asha", keys=KEYS, build=build, single_objective=False)
