"""``wilcoxon``: Optuna's WilcoxonPruner over walk-forward folds, for a single objective.

Each fold of a walk-forward trial is one instance: after each fold the trial reports that
fold's own figure (the trainer's ``instance`` values, not the running figure), and the pruner
stops it when a one-sided Wilcoxon signed-rank test, paired fold by fold with the best trial
so far, says it is worse at ``p_threshold``. With n folds finished the smallest p the test can
reach is 2^-n (0.125 after 3 folds), so the default threshold is 0.2, above Optuna's 0.1: a
trial worse than the best on each of its first 3 folds stops there. A trainer that reports no
per-fold figures (a holdout study) is never pruned by it; the trial attr ``wilcoxon`` says so.
"""

from __future__ import annotations

from typing import Any

import optuna

from hpo.pruners._base import Key, PrunerKind

KEYS = (
    Key("p_threshold", 0.2, 0.0, 1.0),  # prune when the test's p-value falls below this
    Key("n_startup_steps", 2, 0),  # a trial is judged once it has this many folds (min 2)
)


def build(spec: Any) -> optuna.pruners.BasePruner:
    return optuna.pruners.WilcoxonPruner(p_threshold=spec.p_threshold,
                                         n_startup_steps=spec.n_startup_steps)


# Fold k (1-based) is instance k - 1: any fixed id per fold pairs the trials.
KIND = PrunerKind(name="wilcoxon", keys=KEYS, build=build, single_objective=True,
                  first_step=0, per_instance=True)
