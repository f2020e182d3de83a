"""The held-out protocol: a workload from outside ``hpo/`` gets its test period opened.

``tests.hpo.toy_heldout`` declares ``Workload.heldout``; ``hpo.run`` evaluates it when the
study reaches its target and ``hpo.evaluate`` reruns it, with no line of ``hpo/`` naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import polars as pl
import pytest

from hpo import api
from hpo.evaluate import choice_rule_front, main
from hpo.heldout import PREDICTIONS_FILE, REPORT_FILE, read_summary
from tests.conftest import REPO
from trainers.heldout import HeldOut, ranking_score

STUDY = """
name = "ranker"
workload = "tests.hpo.toy_heldout"
n_trials = 3
[[objectives]]
metric = "rank_ic"
direction = "maximize"
[[objectives]]
metric = "val_loss"
direction = "minimize"
[sampler]
name = "random"
seed = 3
[trainer]
epochs = 3
[search_space.lr]
type = "float"
low = 0.001
high = 0.5
log = true
"""


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("protocol")
    (root / "ranker.toml").write_text(STUDY)
    assert api.run_study(str(root / "ranker.toml"), output=str(root / "out")) == 0
    return root / "out"


def test_hpo_never_names_the_toy_workload() -> None:
    for path in (REPO / "hpo").rglob("*.py"):
        assert "toy_heldout" not in path.read_text(), path


def test_run_opens_the_test_period_of_a_plugged_in_workload(ran: Path) -> None:
    report = json.loads((ran / "ranker" / REPORT_FILE).read_text())
    study = optuna.load_study(study_name="ranker", storage=f"sqlite:///{ran / 'hpo.db'}")
    front = sorted(t.number for t in study.best_trials)
    assert [t["number"] for t in report["trials"]] == front
    # The front's pick is made on the selection metric (Sharpe), never on test figures.
    chosen = max(study.best_trials, key=lambda t: (t.user_attrs["sharpe"], -t.number))
    assert report["chosen"] == chosen.number
    assert report["rule"] == choice_rule_front("sharpe")
    assert report["test_dates"][0] > report["validation_dates"][1]
    preds = pl.read_parquet(ran / "ranker" / PREDICTIONS_FILE)
    for trial in report["trials"]:
        rows = preds.filter(pl.col("trial") == trial["number"]).drop("trial")
        assert rows["date"].min() == np.datetime64(report["test_dates"][0])
        expected, _ = ranking_score(rows)
        for name in ("sharpe", "rank_ic", "ic"):
            assert trial["test"][name] == expected[name]
        # Validation figures are the trial's own: they equal what it reported.
        assert trial["validation"]["rank_ic"]["value"] == pytest.approx(
            study.trials[trial["number"]].user_attrs["rank_ic"], abs=1e-12)
    assert report["deflated_sharpe"]["n_trials"] == 3
    # The workload's baseline is scored on the same dates and shown beside the trials.
    base = report["baselines"]["test"]["signal_feature"]
    assert base["rank_ic"]["value"] > 0.1
    summary = read_summary(study)
    assert list(summary["baselines"]) == ["feature +f_signal"]
    assert summary["report_id"] == report["report_id"]


def test_evaluate_reruns_unchanged(ran: Path, capsys: pytest.CaptureFixture) -> None:
    before = (ran / "ranker" / REPORT_FILE).read_bytes()
    assert main(["--study", "ranker", "--output", str(ran)]) == 0
    out = capsys.readouterr().out
    assert "unchanged" in out and "feature +f_signal" in out and "test sharpe" in out
    assert (ran / "ranker" / REPORT_FILE).read_bytes() == before


def test_a_table_metric_must_be_reported() -> None:
    with pytest.raises(ValueError, match="not in reported"):
        type("Bad", (HeldOut,), {"reported": ("sharpe",), "table": ("sharpe", "ic")})


def test_optional_capabilities_are_methods_a_workload_overrides() -> None:
    from tests.hpo.toy_heldout import HELDOUT as TOY
    from trainers.atft_gat.heldout import HELDOUT as ATFT

    assert all(ATFT.supports(c) for c in HeldOut.OPTIONAL)
    assert [c for c in HeldOut.OPTIONAL if TOY.supports(c)] == ["moments", "baselines"]
    with pytest.raises(NotImplementedError, match="has no 'refit' capability"):
        TOY.refit(None, Path("."), Path("."), None)
    with pytest.raises(ValueError, match="not an optional held-out capability"):
        TOY.supports("load")


def test_a_workload_that_cannot_refit_or_score_new_data_says_so_in_one_line(
        ran: Path, capsys: pytest.CaptureFixture) -> None:
    from hpo.predict import main as predict_main
    from hpo.refit import main as refit_main

    assert refit_main(["--study", "ranker", "--output", str(ran)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: workload 'tests.hpo.toy_heldout' cannot refit yet"
    source = ran.parent / "ranker.toml"  # any existing file: refused before it is read
    assert predict_main(["--study", "ranker", "--output", str(ran), "--source", str(source),
                         "--out", str(ran.parent / "s.parquet")]) == 2
    assert capsys.readouterr().err.strip().endswith("cannot score new data yet")
    assert not list((ran / "ranker").glob("refit_*"))
