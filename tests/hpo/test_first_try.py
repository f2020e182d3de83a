"""A user's first try with their own panel: a mistake in the data leaves nothing behind, a
failed trial keeps its reason, and the fixed file runs without ``--force``."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import optuna
import polars as pl
import pytest
from optuna.trial import TrialState

from hpo.records import trial_attrs
from hpo.run import main
from hpo.status import main as status_main
from trainers.metrics import calendar_periods_per_year

STUDY = """
name = "mine"
workload = "atft_gat"
n_trials = 2
[[objectives]]
metric = "sharpe_net"
direction = "maximize"
[data]
source = "{source}"
val_fraction = 0.25
test_fraction = 0.2
{data}
[trainer]
epochs = 1
max_steps_per_epoch = 2
hidden_size = 16
attn_heads = 2
gat_heads = 2
gat_layers = 1
lookback = 10
batch_size = 48
graph_window = 20
graph_k = 4
warmup_steps = 0
"""


def write_panel(path: Path, *, n_stocks: int = 24, n_dates: int = 160, targets=(1,),
                leak: bool = False, duplicate: bool = False) -> Path:
    """A panel as a user brings it: past-only features, forward-return targets."""
    rng = np.random.default_rng(0)
    days = np.arange(np.datetime64("2021-01-04"), np.datetime64("2021-01-04") + n_dates * 7 // 5)
    days = days[np.is_busday(days)][:n_dates]
    ret = 0.02 * rng.standard_normal((len(days), n_stocks))
    frame = pl.DataFrame({
        "date": np.repeat(days, n_stocks),
        "code": [f"S{i:02d}" for i in range(n_stocks)] * len(days),
        "mom": rng.standard_normal(len(days) * n_stocks),
        "rev_5d": rng.standard_normal(len(days) * n_stocks),
        "f_ret_1d_past": np.vstack([np.zeros((1, n_stocks)), ret[:-1]]).ravel(),
        **{f"ret_{h}d": ret.ravel() for h in targets},
    })
    if leak:
        # the return the label of a date holds when trading from the next date
        frame = frame.with_columns(peek=pl.col("ret_1d").shift(-1).over("code") * 3.0)
    if duplicate:
        frame = pl.concat([frame, frame.head(1)])
    if path.suffix == ".csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    return path


def study_file(tmp_path: Path, panel: Path, data: str = "") -> Path:
    path = tmp_path / "mine.toml"
    path.write_text(STUDY.format(source=panel.as_posix(), data=data))
    return path


def run(tmp_path: Path, study: Path, *extra: str) -> int:
    return main(["--study", str(study), "--output", str(tmp_path / "out"), *extra])


@pytest.mark.parametrize(("panel_kw", "data", "expected"), [
    ({}, "", r"^error: panel .*panel\.parquet has no target column\(s\) ret_5d, ret_10d, "
             r"ret_20d for horizons = \[1, 5, 10, 20\]; it has ret_1d: set \[data\] horizons "
             r"= \[1\]"),
    ({"duplicate": True}, "horizons = [1]", r"1 duplicate \(date, code\) row"),
    ({}, 'horizons = [1]\ngraph_source = "past_ret"',
     r"no column 'past_ret' for graph_source .* use_graph = false"),
    ({}, 'horizons = [1]\nfeatures = ["mom", "size"]', r"no column\(s\) size named in features"),
    ({}, 'horizons = [1]\ntest_start = "2019-06-03"',
     r"panel .*: test_start = '2019-06-03' is outside the panel's dates \(2021-01-04 to "
     r"2021-08-13\)"),
    ({"n_dates": 60}, 'horizons = [1]\ncv = "walk_forward"\ncv_folds = 50',
     r"panel .*: the 4\d pre-test dates are too few for 50 walk-forward folds"),
])
def test_a_mistake_in_the_panel_writes_nothing(tmp_path: Path, capsys, panel_kw: dict,
                                                data: str, expected: str) -> None:
    panel = write_panel(tmp_path / "panel.parquet", **panel_kw)
    code = run(tmp_path, study_file(tmp_path, panel, data))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len([line for line in err if line.startswith("error:")]) == 1
    assert any(re.search(expected, line) for line in err), err
    assert not (tmp_path / "out").exists()  # no database, no study, no trial, no cache


def test_a_missing_file_is_one_line_and_writes_nothing(tmp_path: Path, capsys) -> None:
    code = run(tmp_path, study_file(tmp_path, tmp_path / "nowhere.csv", "horizons = [1]"))
    assert code == 2 and "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_failed_first_try_keeps_its_reason_and_the_fixed_file_runs(tmp_path: Path,
                                                                      capsys) -> None:
    """The leakage guard needs the trial's training dates, so it stops a trial: that trial
    keeps the reason, status shows it, and fixing the file needs no --force."""
    panel = write_panel(tmp_path / "panel.parquet", leak=True)
    study = study_file(tmp_path, panel, "horizons = [1]\npurge = 5")
    assert run(tmp_path, study) == 2
    url = f"sqlite:///{tmp_path / 'out' / 'hpo.db'}"
    failed = optuna.load_study(study_name="mine", storage=url).trials
    assert [t.state for t in failed] == [TrialState.FAIL]
    assert "peek" in failed[0].user_attrs["fail_reason"]
    capsys.readouterr()
    assert status_main(["--study", "mine", "--output", str(tmp_path / "out")]) == 0
    assert "failed: trial 0: feature(s) peek" in capsys.readouterr().out

    study.write_text(study.read_text().replace("purge = 5", 'purge = 5\nallow_features = '
                                                           '["peek"]'))
    assert run(tmp_path, study) == 0  # re-created, no --force
    trials = optuna.load_study(study_name="mine", storage=url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(math.isfinite(t.values[0]) for t in trials)
    assert "fail_reason" not in trials[0].user_attrs
    # A file panel trades from the next date, annualises with its own calendar (every business
    # day of 7 months: 263 a year) and says so, in the trial and in the test report.
    days = pl.read_parquet(panel)["date"].unique().to_numpy()
    assert trial_attrs(trials[0])["date_split"]["lag"] == 1
    assert trials[0].user_attrs["periods_per_year"] == calendar_periods_per_year(days) == 263
    report = json.loads((tmp_path / "out" / "mine" / "test_report.json").read_text())
    assert report["periods_per_year"] == 263


def test_a_changed_file_is_still_refused_once_a_trial_finished(tmp_path: Path,
                                                              capsys) -> None:
    panel = write_panel(tmp_path / "panel.csv")
    study = study_file(tmp_path, panel, "horizons = [1]\npurge = 5")
    assert run(tmp_path, study, "--n-trials", "1") == 0
    study.write_text(study.read_text().replace("hidden_size = 16", "hidden_size = 8"))
    capsys.readouterr()
    assert run(tmp_path, study) == 2
    assert "created from a different version" in capsys.readouterr().err


def test_an_output_directory_that_cannot_be_made_is_one_line(tmp_path: Path, capsys) -> None:
    panel = write_panel(tmp_path / "panel.parquet")
    study = study_file(tmp_path, panel, "horizons = [1]")
    (tmp_path / "a_file").write_text("not a directory")
    for output in (tmp_path / "a_file" / "out", Path("/proc/hpo-no-such-dir")):
        code = main(["--study", str(study), "--output", str(output)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err
        assert err.startswith(f"error: --output {output} cannot be created")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "mine.toml", "panel.parquet"]
