"""Bulky study and trial records kept out of their user attrs.

``optuna studies`` prints every study user attr in its table, so the service keeps the user
attrs short (a description, the target, the date split, the test openings, a one-line test
report) and stores what is long (the study file's fingerprinted content, the full test-report
summary the tables render) as study **system** attrs under ``hpo:<key>``, through the storage's
own ``set_study_system_attr``. A study written before keeps them as user attrs; reading falls
back to those.

Trials likewise (``optuna trials`` prints every trial user attr): the per-epoch ``history``, the
data and split summaries, the graph's, the leakage guard's and the timings are trial system attrs
``hpo:<key>`` (``TRIAL_RECORDS``); the metrics, the book, the failure and pruning reasons stay
user attrs. ``trial_attrs(trial)`` is the merged view every reader uses. Optuna copies both
kinds to a retried trial; the objective clears the per-attempt ones (the history among them)
when the retry starts, as it always cleared the user attrs.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial

PREFIX = "hpo:"


def set_record(study: optuna.Study, key: str, value: Any) -> None:
    """Store ``value`` as the study system attr ``hpo:<key>``."""
    study._storage.set_study_system_attr(study._study_id, PREFIX + key, value)


def record(study: optuna.Study, key: str) -> Any:
    """The record ``key``: the system attr, else a user attr of that name (older studies)."""
    system = study._storage.get_study_system_attrs(study._study_id)
    if PREFIX + key in system:
        return system[PREFIX + key]
    return study.user_attrs.get(key)


# Trial attrs stored as system attrs (long values, read by the service, not by a person
# scanning ``optuna trials``).
TRIAL_RECORDS = frozenset({"history", "data", "split", "date_split", "graph", "leak_guard",
                           "feature_rank_ic", "timing", "step_seconds", "fold_metrics",
                           "baselines"})


def set_trial_attr(trial: optuna.Trial, key: str, value: Any) -> None:
    """A trial attr where it belongs: ``TRIAL_RECORDS`` as the system attr ``hpo:<key>``,
    everything else as a user attr."""
    if key in TRIAL_RECORDS:
        trial.storage.set_trial_system_attr(trial._trial_id, PREFIX + key, value)
    else:
        trial.set_user_attr(key, value)


def trial_attrs(trial: FrozenTrial | optuna.Trial) -> dict[str, Any]:
    """The trial's user attrs and its ``hpo:`` records, as one mapping (a record wins); a
    running trial is read from its storage."""
    if not isinstance(trial, FrozenTrial):
        trial = trial.storage.get_trial(trial._trial_id)
    merged = dict(trial.user_attrs)
    for key, value in trial.system_attrs.items():
        if key.startswith(PREFIX):
            merged[key[len(PREFIX):]] = value
    return merged
