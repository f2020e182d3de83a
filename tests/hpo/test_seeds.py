"""The seeds ensemble of the chosen configuration (``[evaluate] seeds``): members trained on the
trial's own dates with its seed and derived ones, their mean standardised score on test beside
the single model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import polars as pl
import pytest

from hpo import api
from hpo.heldout import REPORT_FILE, read_summary, render_lines
from hpo.heldout.seeds import member_seeds
from tests.hpo.test_evaluate import STUDY


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seeds")
    text = (STUDY.replace('name = "held"', 'name = "seeded"').replace("n_trials = 3",
                                                                     "n_trials = 2")
            + "\n[evaluate]\nseeds = 3\n")
    (root / "seeded.toml").write_text(text)
    assert api.run_study(str(root / "seeded.toml"), output=str(root / "out")) == 0
    return root / "out"


def _z(frame: pl.DataFrame) -> np.ndarray:
    frame = frame.sort(["date", "code"])
    pred, day = frame["pred"].to_numpy(), frame["date"].to_numpy()
    out = np.empty_like(pred, dtype=np.float64)
    for d in np.unique(day):
        p = pred[day == d].astype(np.float64)
        out[day == d] = (p - p.mean()) / p.std() if p.std() > 0 else 0.0
    return out


def test_member_seeds_start_with_the_trials_and_are_stable() -> None:
    assert member_seeds(7, 1) == [7]
    three = member_seeds(7, 3)
    assert three[0] == 7 and len(set(three)) == 3
    assert member_seeds(7, 5)[:3] == three  # more seeds keep the first ones


def test_the_ensemble_is_the_mean_of_its_members_scores(ran: Path) -> None:
    from trainers.atft_gat.heldout import HELDOUT
    from trainers.heldout import ensemble_scores

    report = json.loads((ran / "seeded" / REPORT_FILE).read_text())
    ens = report["seeds_ensemble"]
    chosen = next(t for t in report["trials"] if t["chosen"])
    study = optuna.load_study(study_name="seeded", storage=f"sqlite:///{ran / 'hpo.db'}")
    trial = study.trials[chosen["number"]]
    assert ens["seeds"] == member_seeds(trial.user_attrs["seed"], 3)
    assert ens["members_test"][0]["sharpe"] == chosen["test"]["sharpe"]
    assert ens["fit_through"] < report["validation_dates"][0]

    trial_dir = ran / "seeded" / f"trial_{chosen['number']}"
    folder = ran / "seeded" / f"seeds_{chosen['number']}"
    frames = []
    for d in (trial_dir, folder / "seed_1", folder / "seed_2"):
        trained = HELDOUT.load(d)
        frames.append(HELDOUT.predict(d, trained, ran / "cache").frame)
    assert frames[1]["pred"].to_list() != frames[2]["pred"].to_list()  # other seeds, models
    want = np.mean([_z(f) for f in frames], axis=0)
    got = ensemble_scores(frames).sort(["date", "code"])["pred"].to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    trained = HELDOUT.load(trial_dir)
    score = HELDOUT.score(ensemble_scores(frames), trained)[0]
    assert ens["test"]["sharpe"]["value"] == pytest.approx(score["sharpe"]["value"])
    diff = ens["ensemble_minus_single"]["sharpe"]
    assert diff["value"] == pytest.approx(score["sharpe"]["value"]
                                          - chosen["test"]["sharpe"]["value"])
    assert diff["se"] > 0

    summary = read_summary(study)
    text = "\n".join(render_lines(summary))
    assert f"seeds ensemble of trial {chosen['number']} (3 seeds) on test: sharpe" in text
