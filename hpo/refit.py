"""``python -m hpo.refit``: train the chosen configuration again on every date through a day.

Example, after ``hpo.evaluate`` has opened the test period:

    python -m hpo.refit --study production --through 2026-11-30

The chosen trial (the held-out report's rule) is trained again with its resolved
configuration, its seed and its selected number of epochs on every date whose label is
realised by ``--through`` (default: the panel's last date), the study's purge and execution
lag respected, into ``<output>/<study>/refit_<id>/``. Each refit is appended to the study user
attr ``refits`` (id, time, trial, dates, epochs, seed, model SHA-256, directory);
``hpo.predict --model refit`` scores with the newest. A killed refit resumes from its last
epoch when the same command runs again.

A refit trains on the test period, so no honest test figure can be computed after it: it is
refused until ``hpo.evaluate`` has opened the test period. It works for any workload whose
held-out capability can refit (``HeldOut.refit``); the others answer one line that they cannot.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import optuna

from hpo import attrs
from hpo.cli import EXIT_OK, add_study_flags, command_parser, log_to_stderr, one_line_errors
from hpo.heldout.openings import test_openings
from hpo.records import trial_attrs
from hpo.study import trial_dir
from trainers.context import atomic_write_json
from trainers.errors import UserError
from trainers.heldout import RefitRequest

REQUEST_FILE = "refit.json"  # what a refit directory was started for


def refits_of(study: optuna.Study) -> list[dict[str, Any]]:
    """Every recorded refit of the study, oldest first."""
    value = study.user_attrs.get(attrs.REFITS)
    return list(value) if isinstance(value, list) else []


def refit_dir(output: Path, study_name: str, refit_id: int) -> Path:
    return Path(output) / study_name / f"refit_{refit_id}"


def newest_refit(study: optuna.Study, output: Path) -> tuple[dict[str, Any], Path]:
    """The newest refit's entry and directory; a UserError when the study has none."""
    seen = refits_of(study)
    if not seen:
        raise UserError(f"study {study.study_name!r} has no refit yet; run python -m hpo.refit "
                        f"--study {study.study_name} first")
    entry = seen[-1]
    return entry, refit_dir(output, study.study_name, int(entry["id"]))


def _prepare_dir(folder: Path, request: dict[str, Any]) -> None:
    """Reuse a directory a killed refit of the same request left (it resumes from its last
    checkpoint); clear one left by another request."""
    marker = folder / REQUEST_FILE
    if folder.exists():
        try:
            same = json.loads(marker.read_text()) == request
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, request)


def refit(study: optuna.Study, *, output: Path, through: str | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Refit the chosen trial (module docstring); returns the new ``refits`` entry."""
    from hpo.evaluate import chosen_trial, heldout_or_error

    if through is not None:
        try:
            through = date.fromisoformat(through).isoformat()
        except ValueError:
            raise UserError(f"--through {through!r} is not a date; use YYYY-MM-DD") from None
    heldout = heldout_or_error(study)
    if not heldout.supports("refit"):
        raise UserError(f"workload {study.user_attrs.get(attrs.WORKLOAD)!r} cannot refit yet")
    if not test_openings(study):
        raise UserError(f"the test period of study {study.study_name!r} has not been opened: a "
                        "refit trains on it, and no honest test figure could be computed after; "
                        f"run python -m hpo.evaluate --study {study.study_name} first")
    trial = chosen_trial(study, heldout)
    seed = trial.user_attrs.get(attrs.SEED)
    if not isinstance(seed, int):
        raise UserError(f"trial {trial.number} recorded no seed; it cannot be refitted exactly")
    folder = trial_dir(output, study.study_name, trial.number)
    trained = heldout.load(folder)
    seen = refits_of(study)
    refit_id = len(seen) + 1
    out_dir = refit_dir(output, study.study_name, refit_id)
    _prepare_dir(out_dir, {"trial": trial.number, "through": through, "seed": seed})
    result = heldout.refit(trained, folder, out_dir, RefitRequest(
        seed=seed, through=through, trial_attrs=trial_attrs(trial),
        cache_dir=Path(output) / "cache", progress=progress))
    entry = {"id": refit_id, "time": datetime.now(UTC).isoformat(timespec="seconds"),
             "trial": trial.number, "through": result["through"], "fit": list(result["fit"]),
             "fit_dates": int(result["fit_dates"]), "epochs": int(result["epochs"]),
             "seed": seed, "model_sha256": heldout.digest(out_dir),
             "dir": str(out_dir.relative_to(output))}
    study.set_user_attr(attrs.REFITS, [*seen, entry])
    return entry


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "refit",
        "Train the study's chosen configuration again, with its seed and selected "
        "epochs, on every date through --through; allowed once hpo.evaluate has opened the test "
        "period. Example: python -m hpo.refit --study production --through 2026-11-30")
    add_study_flags(p)
    p.add_argument("--through", default=None,
                   help="the last date the refit may read, YYYY-MM-DD (its last fit date is "
                   "this minus the study's purge; default: the panel's last date)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_to_stderr(force=True)
    from hpo.loading import study_for_command

    study = study_for_command(args.study, storage=args.storage, output=args.output)
    entry = refit(study, output=args.output, through=args.through,
                  progress=not args.quiet)
    print(f"refit {entry['id']} of trial {entry['trial']}: {entry['epochs']} epoch(s) on "
          f"{entry['fit_dates']} dates ({entry['fit'][0]} to {entry['fit'][1]}, read through "
          f"{entry['through']}) -> {args.output / entry['dir']} (model "
          f"{entry['model_sha256'][:12]})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
