"""Bulky study records kept out of the study's user attrs.

``optuna studies`` prints every study user attr in its table, so the service keeps the user
attrs short (a description, the target, the date split, the test openings, a one-line test
report) and stores what is long (the study file's fingerprinted content, the full test-report
summary the tables render) as study **system** attrs under ``hpo:<key>``, through the storage's
own ``set_study_system_attr``. A study written before keeps them as user attrs; reading falls
back to those.
"""

from __future__ import annotations

from typing import Any

import optuna

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
