"""``python -m hpo.refit``: the chosen configuration trained again through a day, refused
before the test period is opened, recorded in the study, scored by ``hpo.predict``."""

from __future__ import annotations

from pathlib import Path

import optuna
import polars as pl
import pytest
import torch

from hpo import api
from hpo.evaluate import main as evaluate_main
from hpo.predict import main as predict_main
from hpo.predict import read_metadata
from hpo.records import trial_attrs
from hpo.refit import main
from tests.hpo.test_predict import FILE_STUDY
from trainers.atft_gat.predict import load_trained
from trainers.atft_gat.refit import refit
from trainers.atft_gat.synthetic import generate_market
from trainers.context import TrialContext


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-trial study on a file panel whose test period hpo.run leaves closed."""
    root = tmp_path_factory.mktemp("refit")
    market = generate_market(n_stocks=24, n_dates=220, seed=0, difficulty="easy")
    market.write_parquet(root / "panel.parquet")
    text = FILE_STUDY.replace("{source}", (root / "panel.parquet").as_posix())
    text = "\n".join(line for line in text.splitlines()
                     if not line.startswith(("n_stocks", "n_dates", "market_difficulty")))
    (root / "held.toml").write_text(text + "\n[evaluate]\nauto = false\n")
    assert api.run_study(str(root / "held.toml"), output=str(root / "out")) == 0
    return root


def _study(root: Path) -> optuna.Study:
    return optuna.load_study(study_name="held", storage=f"sqlite:///{root / 'out' / 'hpo.db'}")


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model.pt", map_location="cpu", weights_only=False)["model"]


def test_refit_is_refused_until_the_test_period_is_opened_then_recorded(
        study: Path, capsys: pytest.CaptureFixture) -> None:
    out = study / "out"
    assert main(["--study", "held", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "has not been opened" in err and "hpo.evaluate" in err
    assert not list((out / "held").glob("refit_*")) and "refits" not in _study(study).user_attrs

    assert main(["--study", "held", "--output", str(out), "--through", "yesterday"]) == 2
    assert "is not a date; use YYYY-MM-DD" in capsys.readouterr().err

    assert evaluate_main(["--study", "held", "--output", str(out)]) == 0
    capsys.readouterr()
    assert main(["--study", "held", "--output", str(out), "--quiet"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("refit 1 of trial ")
    refits = _study(study).user_attrs["refits"]
    assert len(refits) == 1
    entry = refits[0]
    chosen = _study(study).user_attrs["test_report"]["chosen"]
    trial = _study(study).trials[chosen]
    assert entry["trial"] == chosen and entry["seed"] == trial.user_attrs["seed"]
    assert entry["epochs"] == 1 and entry["dir"] == "held/refit_1"
    panel = pl.read_parquet(study / "panel.parquet")
    assert entry["through"] == str(panel["date"].max())
    # The refit learns from the validation and test dates too: far more dates than the trial.
    assert entry["fit_dates"] > trial_attrs(trial)["data"]["train_dates"] + 60

    # It is the chosen configuration with its seed, trained directly on the same dates.
    trained = load_trained(out / "held" / f"trial_{chosen}")
    direct = TrialContext(study / "direct", seed=entry["seed"], cache_dir=out / "cache",
                          progress=False)
    refit(trained.config, direct, through=entry["through"], epochs=entry["epochs"])
    refitted = _weights(out / "held" / "refit_1")
    assert all(torch.equal(refitted[k], v) for k, v in _weights(direct.output_dir).items())
    assert load_trained(out / "held" / "refit_1").config == trained.config

    # A second refit through an earlier day is appended; the first stays.
    early = str(panel["date"].unique().sort()[150])
    assert main(["--study", "held", "--output", str(out), "--quiet", "--through", early]) == 0
    refits = _study(study).user_attrs["refits"]
    assert [r["id"] for r in refits] == [1, 2] and refits[0] == entry
    assert refits[1]["through"] == early and refits[1]["fit_dates"] < entry["fit_dates"]


def test_predict_with_the_refit_names_it_and_differs_from_the_chosen_model(
        study: Path, capsys: pytest.CaptureFixture) -> None:
    out = study / "out"
    if "refits" not in _study(study).user_attrs:
        assert evaluate_main(["--study", "held", "--output", str(out)]) in (0, 2)
        assert main(["--study", "held", "--output", str(out), "--quiet"]) == 0
    newest = _study(study).user_attrs["refits"][-1]
    common = ["--study", "held", "--output", str(out), "--source", str(study / "panel.parquet")]
    assert predict_main([*common, "--model", "refit", "--out", str(study / "r.parquet")]) == 0
    assert predict_main([*common, "--out", str(study / "c.parquet")]) == 0
    meta = read_metadata(study / "r.parquet")
    assert meta["model"] == "refit" and meta["refit"]["id"] == newest["id"]
    assert meta["model_sha256"] == newest["model_sha256"] and meta["trial"] == newest["trial"]
    assert read_metadata(study / "c.parquet")["model_sha256"] != meta["model_sha256"]
    refit_scores = pl.read_parquet(study / "r.parquet")["score"]
    assert not refit_scores.equals(pl.read_parquet(study / "c.parquet")["score"])


def test_status_shows_the_newest_refit(study: Path, capsys: pytest.CaptureFixture) -> None:
    from hpo.status import main as status_main

    out = study / "out"
    if "refits" not in _study(study).user_attrs:
        assert evaluate_main(["--study", "held", "--output", str(out)]) in (0, 2)
        assert main(["--study", "held", "--output", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert status_main(["--study", "held", "--output", str(out)]) == 0
    newest = _study(study).user_attrs["refits"][-1]
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("refits: ")]
    assert line and f"newest {newest['id']} of trial {newest['trial']}" in line[0]


def test_a_directory_left_by_another_refit_request_is_cleared(tmp_path: Path) -> None:
    from hpo.refit import REQUEST_FILE, _prepare_dir

    folder = tmp_path / "refit_1"
    _prepare_dir(folder, {"trial": 1, "through": None, "seed": 5})
    (folder / "checkpoint.pt").write_bytes(b"x")
    _prepare_dir(folder, {"trial": 1, "through": None, "seed": 5})  # the same: resumes
    assert (folder / "checkpoint.pt").exists()
    _prepare_dir(folder, {"trial": 2, "through": None, "seed": 5})  # another: cleared
    assert not (folder / "checkpoint.pt").exists() and (folder / REQUEST_FILE).exists()
