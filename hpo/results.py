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

from trainers.context import atomic_write_json

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
        "user_attrs": {k: v for k, v in trial.user_attrs.items()
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
