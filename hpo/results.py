"""``all_trials.json`` and ``best_params.json``, rewritten atomically after every finished trial.

They are read straight from storage each time, so they always describe the study as it is now
(the public project's monitor showed a previous run's file for a whole day).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import attrs
from hpo.records import trial_attrs
from trainers.context import atomic_write_json

STATE_KEYS = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
              TrialState.FAIL: "failed", TrialState.RUNNING: "running",
              TrialState.WAITING: "waiting"}
# The counts every table shows, in order: a trial stopped by a signal is "preempted" (SIGTERM)
# or "interrupted" (Ctrl-C), the machine's fault "environment", a race for the last slot
# "surplus": none of them a failure of the trial (each is queued again or not needed).
COUNT_KEYS = ("complete", "pruned", "failed", "running", "waiting", "surplus", "preempted",
              "interrupted", "environment")


def trial_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """How many trials are in each of ``COUNT_KEYS``."""
    counts = dict.fromkeys(COUNT_KEYS, 0)
    for t in trials:
        stopped = t.state == TrialState.FAIL and t.user_attrs.get(attrs.STOPPED_BY)
        if t.state == TrialState.FAIL and t.user_attrs.get(attrs.ENVIRONMENT_FAULT):
            counts["environment"] += 1  # the machine's fault (hpo.faults): queued again
        elif t.state == TrialState.FAIL and t.user_attrs.get(attrs.SURPLUS):
            counts["surplus"] += 1  # lost the race for the last slot: not a real failure
        elif stopped:  # stopped by a signal and queued again: not a failure of the trial
            counts["preempted" if stopped == "SIGTERM" else "interrupted"] += 1
        elif t.state in STATE_KEYS:
            counts[STATE_KEYS[t.state]] += 1
    return counts

# Bulky per-epoch history stays in the per-trial metrics.json, not in the study-wide export.
_EXPORT_SKIP_ATTRS = ("history",)


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat(timespec="seconds") if ts else None


def trial_record(trial: FrozenTrial, metric_names: list[str]) -> dict[str, Any]:
    values = None
    if trial.values is not None:
        values = dict(zip(metric_names, trial.values, strict=False))
    duration = trial.duration.total_seconds() if trial.duration else None
    return {
        "number": trial.number,
        "state": trial.state.name,
        "values": values,
        "params": trial.params,
        "user_attrs": {k: v for k, v in trial_attrs(trial).items()
                       if k not in _EXPORT_SKIP_ATTRS},
        "datetime_start": _iso(trial.datetime_start),
        "datetime_complete": _iso(trial.datetime_complete),
        "duration_s": duration,
    }


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (one objective) or the Pareto front (several), by trial number."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not complete:
        return []
    return sorted(study.best_trials, key=lambda t: t.number)


class ParetoFront:
    """The best trials (one objective) or Pareto front (several) of a growing set of trials,
    kept up to date trial by trial instead of recomputed from all trials each time.

    Same answer as Optuna's ``Study.best_trials`` on the COMPLETE trials seen so far: a trial
    is on the front when no other is at least as good in every objective and better in one
    (so ties all stay on it).
    """

    def __init__(self, directions: list[optuna.study.StudyDirection]) -> None:
        self._signs = [1.0 if d == optuna.study.StudyDirection.MINIMIZE else -1.0
                       for d in directions]
        self._front: list[tuple[list[float], FrozenTrial]] = []
        self._seen: set[int] = set()

    def update(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        """Add the COMPLETE trials not seen before; the front, by trial number."""
        for trial in trials:
            if trial.state == TrialState.COMPLETE and trial.number not in self._seen:
                self._seen.add(trial.number)
                self._add(trial)
        return sorted((t for _, t in self._front), key=lambda t: t.number)

    def _add(self, trial: FrozenTrial) -> None:
        score = [s * v for s, v in zip(self._signs, trial.values, strict=True)]
        if any(_dominates(other, score) for other, _ in self._front):
            return
        self._front = [(o, t) for o, t in self._front if not _dominates(score, o)]
        self._front.append((score, trial))


def _dominates(a: list[float], b: list[float]) -> bool:
    """``a`` is at least as good as ``b`` everywhere and better somewhere (minimising)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def metric_names(study: optuna.Study) -> list[str]:
    names = study.metric_names
    if names:
        return list(names)
    return [f"value_{i}" for i in range(len(study.directions))]


def write_results(study: optuna.Study, out_dir: Path) -> None:
    names = metric_names(study)
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    atomic_write_json(Path(out_dir) / "all_trials.json", {
        "study": study.study_name,
        "metric_names": names,
        "directions": [d.name.lower() for d in study.directions],
        "counts": counts,
        "trials": [trial_record(t, names) for t in trials],
    })
    best = best_trials(study)
    atomic_write_json(Path(out_dir) / "best_params.json", {
        "study": study.study_name,
        "metric_names": names,
        "directions": [d.name.lower() for d in study.directions],
        "kind": "best_trial" if len(names) == 1 else "pareto_front",
        "trials": [{"number": t.number, "values": dict(zip(names, t.values, strict=False)),
                    "params": t.params} for t in best],
    })
