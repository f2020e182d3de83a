"""A walk-forward ATFT-GAT study end to end: folds in the trials, the held-out report says how
its test period was scored, baselines validated fold by fold, the refit of a walk-forward pick."""

from __future__ import annotations

from pathlib import Path

import optuna
import polars as pl
import pytest

from hpo import api
from hpo.heldout import read_summary
from hpo.records import trial_attrs
from hpo.refit import main as refit_main
from tests.hpo.test_evaluate import STUDY

WF_STUDY = STUDY.replace('name = "held"', 'name = "wf"').replace(
    "purge = 20\n", 'purge = 20\ncv = "walk_forward"\ncv_folds = 3\n')


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wf_study")
    (root / "wf.toml").write_text(WF_STUDY)
    assert api.run_study(str(root / "wf.toml"), output=str(root / "out")) == 0
    return root / "out"


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="wf", storage=f"sqlite:///{out / 'hpo.db'}")


def test_every_trial_reports_its_folds(ran: Path) -> None:
    for t in _study(ran).trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert len(t.user_attrs["folds"]) == 3 and len(trial_attrs(t)["fold_metrics"]) == 3
        assert t.user_attrs["epochs_planned"] == 3  # a trial reports once per fold
        rows = pl.read_parquet(ran / "wf" / f"trial_{t.number}" / "predictions.parquet")
        assert rows["fold"].unique().sort().to_list() == [1, 2, 3]


def test_the_report_says_how_the_test_period_was_scored(ran: Path) -> None:
    summary = read_summary(_study(ran))
    assert "last fold's model" in summary["validation_scheme"]
    folds = _study(ran).trials[0].user_attrs["folds"]
    assert summary["validation_dates"] == [folds[0]["validation"][0], folds[-1]["validation"][1]]


def test_a_walk_forward_pick_refits_with_its_last_folds_epochs(ran: Path) -> None:
    assert refit_main(["--study", "wf", "--output", str(ran), "--quiet"]) == 0
    entry = _study(ran).user_attrs["refits"][-1]
    chosen = _study(ran).trials[entry["trial"]]
    assert entry["epochs"] == trial_attrs(chosen)["fold_metrics"][-1]["epochs"] == 1


def test_the_fold_ensemble_is_the_mean_of_the_fold_models_scores(ran: Path) -> None:
    """Every fold's model is kept; the report scores the test period with the last fold's
    model and with the fold ensemble, whose scores are the mean of the fold models' per-date
    z-scores (recomputed here with numpy); --test-model fold_ensemble makes it the test row."""
    import json

    import numpy as np

    from hpo.evaluate import main as evaluate_main
    from hpo.heldout import REPORT_FILE
    from trainers.atft_gat.heldout import HELDOUT
    from trainers.atft_gat.predict import load_trained, predict_period

    report = json.loads((ran / "wf" / REPORT_FILE).read_text())
    chosen = next(t for t in report["trials"] if t["chosen"])
    trial_dir = ran / "wf" / f"trial_{chosen['number']}"
    names = [f"fold_models/fold_{k}.pt" for k in (1, 2, 3)]
    assert all((trial_dir / n).is_file() for n in names)
    assert chosen["test_model"] == "last_fold"
    assert chosen["test"] == chosen["test_models"]["last_fold"]
    assert set(chosen["fold_ensemble_minus_last_fold"]) >= {"sharpe", "rank_ic"}

    frames = [predict_period(trial_dir, cache_dir=ran / "cache",
                             trained=load_trained(trial_dir, name=n))[0] for n in names]
    z = []
    for frame in frames:
        frame = frame.sort(["date", "code"])
        pred, day = frame["pred"].to_numpy(), frame["date"].to_numpy()
        out = np.empty_like(pred)
        for d in np.unique(day):
            p = pred[day == d]
            out[day == d] = (p - p.mean()) / p.std() if p.std() > 0 else 0.0
        z.append(out)
    want = np.mean(z, axis=0)
    trained = HELDOUT.load(trial_dir)
    got = HELDOUT.predict(trial_dir, trained, ran / "cache").context["test_models"]
    ensemble = got["fold_ensemble"].sort(["date", "code"])
    np.testing.assert_allclose(ensemble["pred"].to_numpy(), want, rtol=1e-9, atol=1e-12)
    assert got["last_fold"].sort(["date", "code"])["pred"].to_list() == \
        frames[-1].sort(["date", "code"])["pred"].to_list()

    assert evaluate_main(["--study", "wf", "--output", str(ran), "--test-model",
                          "fold_ensemble", "--reopen"]) == 0
    report = json.loads((ran / "wf" / REPORT_FILE).read_text())
    chosen = next(t for t in report["trials"] if t["chosen"])
    assert chosen["test_model"] == "fold_ensemble"
    assert chosen["test"] == chosen["test_models"]["fold_ensemble"]


def test_predict_scores_new_dates_with_the_fold_ensemble(ran: Path, tmp_path: Path) -> None:
    """hpo.predict --fold-ensemble: the mean of every fold model's standardised scores, the
    same as the report's fold ensemble on the test dates; refused for a trial without fold
    models."""
    import json

    import numpy as np

    from hpo.heldout import REPORT_FILE
    from hpo.predict import main as predict_main
    from hpo.predict import read_metadata
    from trainers.atft_gat.heldout import HELDOUT
    from trainers.atft_gat.synthetic import generate_market

    generate_market(n_stocks=24, n_dates=220, seed=0, difficulty="easy").write_parquet(
        tmp_path / "panel.parquet")
    report = json.loads((ran / "wf" / REPORT_FILE).read_text())
    first, last = report["test_dates"]
    out = tmp_path / "scores.parquet"
    assert predict_main(["--study", "wf", "--output", str(ran), "--source",
                         str(tmp_path / "panel.parquet"), "--dates", f"{first}:{last}",
                         "--fold-ensemble", "--out", str(out)]) == 0
    trial_dir = ran / "wf" / f"trial_{report['chosen']}"
    want = HELDOUT.predict(trial_dir, HELDOUT.load(trial_dir), ran / "cache").context[
        "test_models"]["fold_ensemble"]
    got = pl.read_parquet(out).join(want, on=["date", "code"], how="inner")
    assert got.height == want.height
    np.testing.assert_allclose(got["score"].to_numpy(), got["pred"].to_numpy(), atol=1e-9)
    assert len(read_metadata(out)["fold_ensemble"]["members_sha256"]) == 3
