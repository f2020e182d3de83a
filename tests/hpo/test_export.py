"""``python -m hpo.export``: JSON, CSV and offline plots, read from storage; skips are notes."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution

from hpo import api
from hpo.export import main
from tests.hpo.test_dashboard import MULTI, PNG_MAGIC
from tests.hpo.test_run import study_file

EXTERNAL_RESOURCE = re.compile(r"<(script|link|img)[^>]+(src|href)=[\"']?(https?:)?//", re.I)


def test_export_multi_objective_study(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = study_file(tmp_path, MULTI)
    out = tmp_path / "out"
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    assert api.run_study(str(path), storage=url, output=str(out)) == 0
    (out / "toy" / "all_trials.json").unlink()  # export rewrites it from storage
    capsys.readouterr()

    assert main(["--study", "toy", "--storage", url, "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert stdout == (f"exported study toy (4 trials) from {url} to {out / 'toy'}: "
                      "all_trials.json, best_params.json, trials.csv, plots/ (7 plots as HTML "
                      "+ PNG)\n")
    study = optuna.load_study(study_name="toy", storage=url)
    exported = json.loads((out / "toy" / "all_trials.json").read_text())
    assert [t["values"] for t in exported["trials"]] == [
        {"loss": t.values[0], "score": t.values[1]} for t in study.trials]
    best = json.loads((out / "toy" / "best_params.json").read_text())
    assert best["kind"] == "pareto_front"
    assert [t["number"] for t in best["trials"]] == sorted(t.number for t in study.best_trials)

    with (out / "toy" / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    header = list(rows[0])
    assert header[:4] == ["number", "state", "values_loss", "values_score"]
    assert {"params_lr", "params_width", "params_optimizer", "user_attrs_worker",
            "user_attrs_epoch"} <= set(header)
    assert "user_attrs_history" not in header  # per-epoch lists stay in metrics.json
    for row, t in zip(rows, study.trials, strict=True):
        assert int(row["number"]) == t.number and row["state"] == "COMPLETE"
        assert float(row["values_loss"]) == t.values[0]
        assert float(row["params_lr"]) == t.params["lr"]
        assert row["params_optimizer"] == t.params["optimizer"]
        assert int(row["params_width"]) == t.params["width"]

    plots = out / "toy" / "plots"
    stems = ["pareto_front", "history_loss", "history_score", "importances_loss",
             "importances_score", "parallel_coordinate_loss", "parallel_coordinate_score"]
    assert sorted(p.name for p in plots.iterdir()) == sorted(
        f"{s}.{ext}" for s in stems for ext in ("html", "png"))
    for stem in stems:
        html = (plots / f"{stem}.html").read_text()
        # plotly.js is inside the file: it opens offline, nothing is fetched from a CDN
        assert EXTERNAL_RESOURCE.search(html) is None
        assert "Plotly.newPlot" in html and len(html) > 1_000_000
        assert (plots / f"{stem}.png").read_bytes().startswith(PNG_MAGIC)
    pareto = (plots / "pareto_front.html").read_text()
    assert '"title":{"text":"loss"}' in pareto.replace(" ", "") and "score" in pareto


def _study(url: str, name: str, directions: list[str], values: list[list[float]],
           *, params: int = 1) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=url, directions=directions)
    dists = {f"p{i}": FloatDistribution(0.0, 1.0) for i in range(params)}
    for k, v in enumerate(values):
        study.add_trial(optuna.trial.create_trial(
            params={p: 0.1 * (k + 1) for p in dists}, distributions=dists, values=v))
    return study


def test_too_few_trials_or_params_are_notes_not_crashes(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    _study(url, "one", ["minimize"], [[1.0]])
    study = optuna.create_study(study_name="empty", storage=url)
    study.enqueue_trial({"x": 1.0})
    _study(url, "four_objectives", ["minimize"] * 4, [[1, 2, 3, 4], [2, 1, 4, 3]])
    out = tmp_path / "out"

    assert main(["--study", "one", "--storage", url, "--output", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("plots/ (1 plots as HTML + PNG)")
    assert lines[1:] == ["note: importances and parallel_coordinate skipped: needs >= 2 "
                         "complete trials, the study has 1; needs >= 2 parameters, the study "
                         "has 1"]
    assert sorted(p.name for p in (out / "one" / "plots").iterdir()) == [
        "history_value_0.html", "history_value_0.png"]

    assert main(["--study", "empty", "--storage", url, "--output", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == ["note: all plots skipped: the study has no complete trial yet"]
    with (out / "empty" / "trials.csv").open() as f:
        assert [r["state"] for r in csv.DictReader(f)] == ["WAITING"]

    assert main(["--study", "four_objectives", "--storage", url, "--output", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == ["note: pareto_front skipped: Optuna draws 2 or 3 objectives, the study "
                         "has 4; see best_params.json for the front",
                         "note: importances and parallel_coordinate skipped: needs >= 2 "
                         "parameters, the study has 1"]
    assert sorted(p.name for p in (out / "four_objectives" / "plots").glob("*.html")) == [
        f"history_value_{i}.html" for i in range(4)]


def test_unknown_study_and_unreachable_storage(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    _study(url, "b", ["minimize"], [[1.0]])
    _study(url, "a", ["minimize"], [[1.0]])
    assert main(["--study", "nope", "--storage", url]) == 2
    assert capsys.readouterr().err == (
        f"error: unknown study 'nope' in {url}; studies there: a, b\n")
    bad = "postgresql+psycopg2://alice:hunter2@127.0.0.1:1/nowhere"
    assert main(["--study", "a", "--storage", bad]) == 2
    assert capsys.readouterr().err == (
        "error: cannot connect to storage postgresql+psycopg2://alice:***@127.0.0.1:1/nowhere: "
        'connection to server at "127.0.0.1", port 1 failed: Connection refused; check the '
        "host, port, database name and credentials\n")
    empty = f"sqlite:///{tmp_path / 'missing' / 'hpo.db'}"
    assert main(["--study", "a", "--storage", empty]) == 2
    assert capsys.readouterr().err == (
        f"error: no study database at {tmp_path / 'missing' / 'hpo.db'}; run `python -m hpo.run "
        "--study NAME` first, or pass --storage (or set $HPO_STORAGE)\n")


def test_export_from_postgres(pg_url: str, tmp_path: Path, capsys) -> None:
    _study(pg_url, "pg", ["minimize", "maximize"], [[1, 2], [2, 3], [3, 1]], params=2)
    out = tmp_path / "out"
    assert main(["--study", "pg", "--storage", pg_url, "--output", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("plots/ (7 plots as HTML + PNG)")
    best = json.loads((out / "pg" / "best_params.json").read_text())
    assert [t["number"] for t in best["trials"]] == [0, 1]  # trial 2 is dominated
