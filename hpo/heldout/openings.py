"""The test period is opened once: every look at it is recorded in the study user attr
``test_openings`` (append-only), and a new look after the first needs ``--reopen``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import attrs
from trainers.errors import UserError


class ReopenRequired(UserError):
    """The test period was opened before and this would be a new look at it."""


# What a look at the test period is: the same models of the same front on the same dates give
# the same test figures, so recomputing them (after more trials changed only the deflation, or
# with --force) is not a new look; another front, chosen trial or model is.
LOOK_KEYS = ("study", "front", "chosen", "model_sha256", "split")


def test_openings(study: optuna.Study) -> list[dict[str, Any]]:
    """Every recorded look at the study's test period, oldest first."""
    value = study.user_attrs.get(attrs.TEST_OPENINGS)
    return list(value) if isinstance(value, list) else []


def reopen_message(study: optuna.Study, seen: list[dict[str, Any]]) -> str:
    last = seen[-1]
    return (f"the test period of study {study.study_name!r} was opened {len(seen)} time(s), "
            f"last at {last.get('time')} (chosen trial {last.get('chosen')}, "
            f"{last.get('finished_trials')} finished trials); the front or its models changed "
            "since, and looking again turns the test period into a second validation set. "
            f"Pass --reopen to look anyway; it is recorded as opening {len(seen) + 1}")


def record_opening(study: optuna.Study, seen: list[dict[str, Any]], *, front: list[FrozenTrial],
                   chosen: FrozenTrial, report_id: str, look_id: str) -> list[dict[str, Any]]:
    """Append this look to ``test_openings`` (stored on the study); the new list."""
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                   for t in study.get_trials(deepcopy=False))
    seen = [*seen, {"opening": len(seen) + 1,
                    "time": datetime.now(UTC).isoformat(timespec="seconds"),
                    "finished_trials": finished, "front": [t.number for t in front],
                    "chosen": chosen.number, "report_id": report_id, "look_id": look_id,
                    "reopened": bool(seen)}]
    study.set_user_attr(attrs.TEST_OPENINGS, seen)
    return seen
