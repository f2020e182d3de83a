"""The service as Python: every command a typed function, for notebooks, scripts and tests.

Each function does what its command does (``python -m hpo <command>``, or the module
``python -m hpo.<command>``), with the same defaults, and raises ``UserError`` (a
``ValueError``) with the command's one-line message where the command exits 2:

    from hpo import api

    api.run_study("studies/mine.toml", output="output", n_trials=20)
    report = api.evaluate("mine", output="output")
    meta = api.predict("mine", source="panel.parquet", out="today.parquet", output="output")
    live = api.monitor("mine", source="panel.parquet", output="output")

Storage is ``storage`` when given, else ``$HPO_STORAGE``, else the embedded SQLite file under
``output``, as for the commands. Nothing here parses argv: the command-line modules parse
their options and call the same code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from hpo.config import EvaluateSpec
from trainers.errors import UserError

__all__ = ["UserError", "evaluate", "load_study", "monitor", "predict", "refit", "run_study"]


def run_study(study: str | Path, *, output: str | Path = "output", storage: str | None = None,
              n_trials: int | None = None, timeout: float | None = None,
              workers: int | str = 1, force: bool = False, quiet: bool = False,
              heartbeat_interval: int | None = None, grace_period: int | None = None,
              max_retry: int | None = None) -> int:
    """Run or resume a study (``python -m hpo run``): ``study`` is a name in ``studies/`` or
    a path to a study file. Returns the exit code (0 done, 1 the study could not go on, 130 /
    143 stopped by a signal); a user error raises ``UserError``, nothing written."""
    from hpo.run import RunRequest, run_request

    return run_request(RunRequest(
        study=str(study), storage=storage, output=Path(output), n_trials=n_trials,
        timeout=timeout, workers=str(workers), heartbeat_interval=heartbeat_interval,
        grace_period=grace_period, max_retry=max_retry, force=force, quiet=quiet))


def load_study(name: str, *, output: str | Path = "output",
               storage: str | None = None) -> optuna.Study:
    """The existing study ``name`` (a ``UserError`` naming the studies there when absent)."""
    from hpo.loading import study_for_command

    return study_for_command(name, storage=storage, output=Path(output))


def evaluate(name: str, *, output: str | Path = "output", storage: str | None = None,
             force: bool = False, reopen: bool = False,
             pbo_blocks: int = EvaluateSpec.pbo_blocks,
             test_model: str = EvaluateSpec.test_model, seeds: int = 1) -> dict[str, Any]:
    """Open the held-out test period (``python -m hpo evaluate``) and return the report."""
    from hpo.evaluate import evaluate_study

    spec = EvaluateSpec(pbo_blocks=pbo_blocks, test_model=test_model, seeds=seeds)
    bad = spec.problems()
    if bad:
        raise UserError("; ".join(f"{key} {problem}" for key, problem in bad))
    study = load_study(name, output=output, storage=storage)
    return evaluate_study(study, output=Path(output), force=force, reopen=reopen,
                          pbo_blocks=spec.pbo_blocks, test_model=spec.test_model,
                          seeds=spec.seeds).report


def predict(name: str, *, source: str | Path, out: str | Path, output: str | Path = "output",
            storage: str | None = None, model: str = "chosen", dates: str = "last",
            fold_ensemble: bool = False, blend: bool = False) -> dict[str, Any]:
    """Score ``source`` with the study's model into ``out`` (``python -m hpo predict``);
    returns the file's metadata."""
    from hpo.predict import predict as predict_panel

    study = load_study(name, output=output, storage=storage)
    return predict_panel(study, source=Path(source), output=Path(output), out=Path(out),
                         model=model, dates=dates, fold_ensemble=fold_ensemble,
                         blend=blend)


def refit(name: str, *, output: str | Path = "output", storage: str | None = None,
          through: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Train the chosen configuration again through ``through`` (``python -m hpo refit``);
    returns the study's new ``refits`` entry."""
    from hpo.refit import refit as refit_study

    study = load_study(name, output=output, storage=storage)
    return refit_study(study, output=Path(output), through=through, progress=progress)


def monitor(name: str, *, source: str | Path, output: str | Path = "output",
            storage: str | None = None, model: str = "chosen") -> dict[str, Any]:
    """Score the dates after the test period (``python -m hpo monitor``); returns the
    summary: figures, verdict, files."""
    from hpo.monitor import monitor as monitor_study

    study = load_study(name, output=output, storage=storage)
    return monitor_study(study, source=Path(source), output=Path(output), model=model)
