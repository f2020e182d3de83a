"""``python -m hpo.run`` end to end on the toy workload, against SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.records import trial_attrs
from hpo.run import main
from tests.conftest import run_cli
from tests.hpo.test_config import TOY


def study_file(tmp_path: Path, text: str = TOY, name: str = "toy") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text.replace('description = "toy"', f'name = "{name}"\ndescription = "toy"'))
    return path


def load(url: str, name: str = "toy") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def test_run_reaches_target_and_rerun_adds_nothing(tmp_path: Path, storage_url: str) -> None:
    path = study_file(tmp_path)
    out = tmp_path / "out"
    args = ["--study", str(path), "--storage", storage_url, "--output", str(out)]
    assert main(args) == 0
    study = load(storage_url)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4
    assert study.metric_names == ["loss"]
    assert main(args) == 0
    assert len(load(storage_url).trials) == 4

    # the study-wide files agree with storage
    exported = json.loads((out / "toy" / "all_trials.json").read_text())
    by_number = {t["number"]: t for t in exported["trials"]}
    for t in complete:
        assert by_number[t.number]["values"] == {"loss": t.values[0]}
        assert by_number[t.number]["params"] == t.params
    best = json.loads((out / "toy" / "best_params.json").read_text())
    assert best["kind"] == "best_trial"
    assert best["trials"][0]["number"] == study.best_trial.number
    assert best["trials"][0]["params"] == study.best_trial.params
    # per-trial metrics.json holds the objective value stored in the database
    for t in complete:
        metrics = json.loads((out / "toy" / f"trial_{t.number}" / "metrics.json").read_text())
        assert metrics["objectives"]["loss"] == t.values[0]
        assert t.user_attrs["loss"] == t.values[0]
        assert [h["epoch"] for h in trial_attrs(t)["history"]] == [1, 2]


def test_n_trials_flag_raises_target_and_resumes(tmp_path: Path) -> None:
    path = study_file(tmp_path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    base = ["--study", str(path), "--storage", url, "--output", str(tmp_path / "o")]
    assert main([*base, "--n-trials", "2"]) == 0
    first = [t.params for t in load(url).trials]
    assert main([*base, "--n-trials", "5"]) == 0
    trials = load(url).trials
    assert len(trials) == 5
    # a seeded study restarted must not re-propose its first points
    assert all(t.params not in first for t in trials[2:])


def test_multi_objective_names_and_pareto_front(tmp_path: Path) -> None:
    text = TOY.replace('[sampler]', '[[objectives]]\nmetric = "score"\ndirection = "maximize"\n'
                                    '[sampler]').replace('name = "tpe"', 'name = "nsga2"')
    path = study_file(tmp_path, text)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert main(["--study", str(path), "--storage", url, "--output", str(tmp_path / "o")]) == 0
    study = load(url)
    assert study.metric_names == ["loss", "score"]
    assert all(len(t.values) == 2 for t in study.trials)
    best = json.loads((tmp_path / "o" / "toy" / "best_params.json").read_text())
    assert best["kind"] == "pareto_front"
    assert sorted(t["number"] for t in best["trials"]) == sorted(
        t.number for t in study.best_trials)


def test_failed_trial_does_not_stop_the_study(tmp_path: Path) -> None:
    text = TOY.replace("epochs = 2", "epochs = 2\nfail_on_width = 2") \
              .replace("low = 1\nhigh = 4", "low = 2\nhigh = 3")
    path = study_file(tmp_path, text)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert main(["--study", str(path), "--storage", url, "--output", str(tmp_path / "o")]) == 0
    study = load(url)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    for t in study.get_trials(states=(TrialState.FAIL,)):
        assert t.user_attrs["fail_reason"] == "width 2 is configured to fail"


@pytest.mark.parametrize("extra, expected", [
    (["--study", "no_such_study"], "error: unknown study 'no_such_study'; available:"),
    (["--workers", "zero"], "error: --workers must be a positive number or 'auto'"),
    (["--n-trials", "0"], "error: --n-trials must be >= 1, got 0"),
])
def test_bad_flags_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture,
                                   extra: list[str], expected: str) -> None:
    path = study_file(tmp_path)
    args = ["--study", str(path), "--output", str(tmp_path / "o"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(expected)


def test_unreachable_database_masks_password(tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    path = study_file(tmp_path)
    url = "postgresql+psycopg2://alice:hunter2@127.0.0.1:1/nowhere"
    assert main(["--study", str(path), "--storage", url, "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err
    assert "cannot connect to storage postgresql+psycopg2://alice:***@127.0.0.1:1/nowhere" in err
    assert not (tmp_path / "o" / "toy").exists()


def test_direction_mismatch_is_refused_before_writing(tmp_path: Path, capsys) -> None:
    path = study_file(tmp_path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    base = ["--study", str(path), "--storage", url, "--output", str(tmp_path / "o")]
    assert main([*base, "--n-trials", "1"]) == 0
    path.write_text(path.read_text().replace('direction = "minimize"', 'direction = "maximize"'))
    assert main(base) == 2
    assert "has directions ['minimize'] but" in capsys.readouterr().err
    assert len(load(url).trials) == 1


def test_changed_study_file_refused_unless_forced(tmp_path: Path, capsys) -> None:
    path = study_file(tmp_path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    base = ["--study", str(path), "--storage", url, "--output", str(tmp_path / "o")]
    assert main([*base, "--n-trials", "1"]) == 0
    path.write_text(path.read_text().replace("high = 4", "high = 8"))
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "changed: search_space (width)" in err and "--force" in err
    assert len(load(url).trials) == 1
    assert main([*base, "--force"]) == 0
    assert len(load(url).trials) == 4


def test_cli_subprocess_prints_summary_and_dashboard_command(tmp_path: Path) -> None:
    path = study_file(tmp_path)
    out = tmp_path / "o"
    proc = run_cli(["hpo.run", "--study", str(path), "--output", str(out), "--n-trials", "2"])
    assert proc.returncode == 0, proc.stderr
    assert "study toy: 2/2 finished" in proc.stdout
    assert "best trial:" in proc.stdout
    assert "python -m hpo.dashboard --study toy --storage sqlite:///" in proc.stdout
    assert (out / "hpo.db").exists()  # the embedded default
    # Optuna's own CLI sees the study
    import subprocess
    import sys

    optuna_cli = Path(sys.executable).parent / "optuna"
    listed = subprocess.run([str(optuna_cli), "studies", "--storage",
                             f"sqlite:///{out / 'hpo.db'}"], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "toy" in listed.stdout and "loss" in listed.stdout
