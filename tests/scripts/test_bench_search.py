"""bench_search's held-out figures: after a tiny paired run, the test RankIC reported for the
trial best on validation is that trial's model on the test dates, recomputed here on its own
(per-date Spearman, mean), shared startup trials included."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from scipy.stats import spearmanr

from scripts import bench_search
from trainers.atft_gat.predict import predict_period

SEED, TRIALS, STARTUP = 0, 2, 1
# A smaller market and shorter training than the bench's: what is tested is which model is
# predicted on which dates and how it is scored, not how well it learns. 160 dates still leave
# 28 test dates, enough blocks for a bootstrap SE.
TINY_DATA = {**bench_search.DATA, "n_stocks": 30, "n_dates": 160}
TINY_TRAINER = {**bench_search.TRAINER, "epochs": 1, "max_steps_per_epoch": 4}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bench_search")
    out = root / "search.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench_search, "DATA", TINY_DATA)
        mp.setattr(bench_search, "TRAINER", TINY_TRAINER)
        code = bench_search.main(["--samplers", "tpe", "random", "--seeds", str(SEED),
                                  "--trials", str(TRIALS), "--n-startup", str(STARTUP),
                                  "--dir", str(root / "studies"), "--out", str(out)])
    assert code == 0
    return {"report": json.loads(out.read_text()), "dir": root / "studies"}


def _spearman_mean(frame: Any) -> float:
    """Mean over test dates of the Spearman correlation of pred and target (the RankIC)."""
    dates, pred, target = (frame[c].to_numpy() for c in ("date", "pred", "target"))
    values = np.array([spearmanr(pred[dates == d], target[dates == d]).statistic
                       for d in np.unique(dates)])
    return float(values[np.isfinite(values)].mean())


def test_test_rank_ic_is_the_val_best_trials_model_on_the_test_dates(bench: dict[str, Any]
                                                                     ) -> None:
    report, studies = bench["report"], bench["dir"]
    url = f"sqlite:///{studies / 'hpo.db'}"
    shared_checked = 0
    for sampler in ("tpe", "random"):
        study = optuna.load_study(study_name=f"search_{sampler}_s{SEED}", storage=url)
        trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
        row = report["samplers"][sampler]
        curve = row["best_test_rank_ic_per_trial"][str(SEED)]
        ses = row["best_test_rank_ic_se_per_trial"][str(SEED)]
        val_end = np.datetime64(study.user_attrs["date_split"]["val"][1])
        assert len(curve) == len(trials) == TRIALS
        for i, (value, se) in enumerate(zip(curve, ses, strict=True)):
            so_far = [t for t in trials[:i + 1] if t.state == optuna.trial.TrialState.COMPLETE]
            best = max(so_far, key=lambda t: (t.value, -t.number))
            # The trial's own record of where it was trained; a shared trial keeps its
            # source study's directory.
            trial_dir = Path(best.user_attrs["output_dir"])
            shared_checked += "shared_from" in best.user_attrs
            frame, _, _ = predict_period(trial_dir, cache_dir=studies / "cache")
            assert frame["date"].min() > val_end  # held-out dates only
            assert value == pytest.approx(_spearman_mean(frame), abs=1e-9)
            assert se is not None and 0 < se < 1
        assert row["final_best_val_trial"] == [study.best_trial.number]
        assert row["final_best_test_rank_ic"] == [curve[-1]]
    assert shared_checked >= 1  # random's first trial is TPE's, read from TPE's directory


def test_summary_pairs_test_figures_with_random(bench: dict[str, Any]) -> None:
    report = bench["report"]
    tpe, rnd = report["samplers"]["tpe"], report["samplers"]["random"]
    assert set(report["figures"]) == {"val_rank_ic", "test_rank_ic"}
    assert report["split"]["test"][0] > report["split"]["val"][1]
    for figure in ("val", "test"):
        a = tpe[f"final_best_{figure}_rank_ic"][0]
        b = rnd[f"final_best_{figure}_rank_ic"][0]
        assert math.isfinite(a) and math.isfinite(b)
        assert tpe[f"{figure}_gap_vs_random_per_seed"] == [pytest.approx(a - b)]
        assert tpe[f"{figure}_gap_vs_random_median"] == pytest.approx(a - b)
        assert tpe[f"median_final_best_{figure}_rank_ic"] == a
    assert "test_gap_vs_random_per_seed" not in rnd
