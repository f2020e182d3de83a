"""``python -m hpo.export --study NAME``: a study's trials and plots as files, read from storage.

Example:
    python -m hpo.export --study demo
    python -m hpo.export --study production --storage postgresql+psycopg2://hpo@db:5432/hpo

Writes under ``<output>/<study>/``: ``all_trials.json`` and ``best_params.json`` (the same files
the workers refresh after every trial), ``trials.csv`` (one row per trial: values, params and
user attrs flattened into columns) and ``plots/`` with a Pareto front (several objectives),
optimisation history, parameter importances and parallel coordinates, each as a self-contained
HTML file (plotly.js embedded: opens offline) and a PNG. Plots the study cannot support yet are
skipped with a note.
Exit codes: 0 ok, 2 a user error (one line ``error: ...``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import optuna

from hpo import attrs
from hpo.cli import EXIT_OK, add_study_flags, command_parser, one_line_errors
from hpo.loading import open_existing_study
from hpo.pruning import epochs_saved
from hpo.records import trial_attrs
from hpo.results import metric_names, write_results
from hpo.storage import mask_url
from trainers.context import atomic_write_bytes

CSV_NAME = "trials.csv"
PLOTS_DIRNAME = "plots"
# Per-epoch history is a list per trial: it stays in metrics.json / history.json, not the CSV.
_CSV_SKIP_ATTRS = (attrs.HISTORY,)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list | tuple | bool):
        return json.dumps(value)
    return value


def trial_rows(study: optuna.Study) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of ``trials.csv``, named like ``Study.trials_dataframe()``'s columns.

    ``values_<metric>``, ``params_<name>``, ``user_attrs_<key>``; nested attrs become JSON text.
    (Built directly, so the export needs no pandas.)
    """
    names = metric_names(study)
    trials = study.get_trials(deepcopy=False)
    params = list(dict.fromkeys(p for t in trials for p in t.params))
    keys = list(dict.fromkeys(k for t in trials for k in trial_attrs(t)
                              if k not in _CSV_SKIP_ATTRS))
    columns = ["number", "state", *(f"values_{n}" for n in names), "datetime_start",
               "datetime_complete", "duration_s", *(f"params_{p}" for p in params),
               *(f"user_attrs_{k}" for k in keys)]
    rows = []
    for t in trials:
        merged = trial_attrs(t)
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        for i, n in enumerate(names):
            row[f"values_{n}"] = t.values[i] if t.values else None
        row["datetime_start"] = t.datetime_start.isoformat() if t.datetime_start else None
        row["datetime_complete"] = (t.datetime_complete.isoformat()
                                    if t.datetime_complete else None)
        row["duration_s"] = t.duration.total_seconds() if t.duration else None
        for p in params:
            row[f"params_{p}"] = t.params.get(p)
        for k in keys:
            row[f"user_attrs_{k}"] = merged.get(k)
        rows.append({k: _cell(v) for k, v in row.items()})
    return columns, rows


def write_csv(study: optuna.Study, path: Path) -> Path:
    columns, rows = trial_rows(study)
    path = Path(path)
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    # the one atomic writer: a full disk names this file and leaves no temp file behind
    atomic_write_bytes(path, buf.getvalue().encode(), durable=False)
    return path


def export_study(study: optuna.Study, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Write every export file for ``study`` into ``out_dir``; returns (files, notes)."""
    from hpo.plots import write_plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results(study, out_dir)
    files = [out_dir / "all_trials.json", out_dir / "best_params.json",
             write_csv(study, out_dir / CSV_NAME)]
    plots, notes = write_plots(study, out_dir / PLOTS_DIRNAME)
    return files + plots, notes


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "export",
        "Export a study's trials (JSON, CSV) and plots (HTML + PNG) to "
        "<output>/<study>/. Example: python -m hpo.export --study demo")
    add_study_flags(p, output="directory holding the embedded database; files go to "
                    "<output>/<study>/ (default: output)")
    return p


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    study, _, url = open_existing_study(args.study, storage=args.storage,
                                        output=args.output)
    out_dir = args.output / args.study
    files, notes = export_study(study, out_dir)
    n_plots = sum(1 for f in files if f.parent.name == PLOTS_DIRNAME and f.suffix == ".html")
    pruned, saved = epochs_saved(study.get_trials(deepcopy=False))
    pruning = f", {pruned} pruned, {saved} epochs saved" if pruned else ""
    print(f"exported study {study.study_name} ({len(study.get_trials(deepcopy=False))} trials"
          f"{pruning}) "
          f"from {mask_url(url)} to {out_dir}: all_trials.json, best_params.json, {CSV_NAME}, "
          f"{PLOTS_DIRNAME}/ ({n_plots} plots as HTML + PNG)")
    for note in notes:
        print(f"note: {note}")
    from hpo.heldout import describe
    from hpo.progress import evaluate_command

    for line in describe(study, command=evaluate_command(url, args.study, args.output)):
        print(line)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
