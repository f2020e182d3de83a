"""bench_cv after a tiny run: the three studies sample the same configurations, the test scores
it correlates are each trial's own model on the test dates, and the compute it counts is the
model-epochs the trials trained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpo.records import trial_attrs
from scripts import bench_cv
from trainers.atft_gat.predict import load_trained, predict_period
from trainers.heldout import ranking_score

ARGS = ["--market-seeds", "0", "--n-trials", "3", "--n-stocks", "30", "--n-dates", "300",
        "--folds", "3", "--steps", "3", "--batch-size", "120", "--keep"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bench_cv")
    assert bench_cv.main([*ARGS, "--workdir", str(root / "studies"), "--out", str(root)]) == 0
    return {"report": json.loads((root / "cv.json").read_text()), "dir": root / "studies"}


def _study(bench: dict[str, Any], mode: str) -> tuple[optuna.Study, Path]:
    out = bench["dir"] / "market_0" / mode / "out"
    return optuna.load_study(study_name=f"cv_{mode}", storage=f"sqlite:///{out / 'hpo.db'}"), out


def test_the_modes_sample_the_same_configurations(bench: dict[str, Any]) -> None:
    params = [[t.params for t in _study(bench, mode)[0].trials] for mode in bench_cv.MODES]
    assert params[0] == params[1] == params[2]
    wf = _study(bench, "walk_forward")[0]
    assert all(trial_attrs(t)["date_split"].get("folds") for t in wf.trials)
    assert "folds" not in trial_attrs(_study(bench, "holdout")[0].trials[0])["date_split"]


def test_test_scores_are_each_trials_own_model_on_the_test_dates(bench: dict[str, Any]) -> None:
    market = bench["report"]["markets"][0]
    for mode in ("holdout", "walk_forward"):
        study, out = _study(bench, mode)
        figures = market["studies"][mode]
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert figures["selection"] == [t.value for t in complete]
        for t, test in zip(complete, figures["test"], strict=True):
            folder = out / study.study_name / f"trial_{t.number}"
            trained = load_trained(folder)
            frame = predict_period(folder, cache_dir=out / "cache", trained=trained)[0]
            assert test == ranking_score(frame)[0]["rank_ic"]["value"]


def test_compute_is_counted_in_model_epochs(bench: dict[str, Any]) -> None:
    studies = bench["report"]["markets"][0]["studies"]
    assert studies["holdout"]["model_epochs"] == 3  # 3 trials x 1 epoch
    assert studies["walk_forward"]["model_epochs"] == 9  # x 3 folds
    pruned = studies["walk_forward_pruned"]
    assert pruned["model_epochs"] == 9 - sum(
        3 - len(trial_attrs(t)["fold_metrics"]) for t in _study(bench, "walk_forward_pruned")[0]
        .trials)


def test_the_chosen_trial_is_compared_with_the_best_baseline_on_test(
        bench: dict[str, Any]) -> None:
    report = bench["report"]
    for mode in bench_cv.MODES:
        versus = report["markets"][0]["studies"][mode]["versus_baseline"]
        assert versus["baseline"] in ("best_feature", "linear")
        for metric in ("rank_ic", "sharpe_net"):
            assert set(versus[metric]) >= {"value", "se"} and versus[metric]["se"] > 0
        pooled = report["pooled"]["chosen_minus_best_baseline"][mode]
        assert pooled["rank_ic"]["mean"] == pytest.approx(versus["rank_ic"]["value"])
