"""``python -m hpo.predict``: the chosen model on a panel the study never saw, through the
training pipeline, and a file that names the model it came from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from hpo import api
from hpo.heldout import PREDICTIONS_FILE, REPORT_FILE
from hpo.predict import main, read_metadata
from tests.hpo.test_evaluate import STUDY
from trainers.atft_gat.synthetic import generate_market

FILE_STUDY = (STUDY.replace('n_trials = 3', 'n_trials = 2')
              .replace('[data]\n', '[data]\nsource = "{source}"\nexecution_lag = 0\n'))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-trial study on a file panel (the easy market), run to its target (the test period
    opened by hpo.run)."""
    root = tmp_path_factory.mktemp("predict")
    market = generate_market(n_stocks=24, n_dates=220, seed=0, difficulty="easy")
    market.write_parquet(root / "panel.parquet")
    run_file_study(root)
    return root


def run_file_study(root: Path) -> None:
    """Run the held study (FILE_STUDY) on ``root/panel.parquet`` to its target, output under
    ``root/out``."""
    text = FILE_STUDY.replace("{source}", (root / "panel.parquet").as_posix())
    text = "\n".join(line for line in text.splitlines()
                     if not line.startswith(("n_stocks", "n_dates", "market_difficulty")))
    (root / "held.toml").write_text(text + "\n")
    assert api.run_study(str(root / "held.toml"), output=str(root / "out")) == 0


def _predict(root: Path, *args: str) -> int:
    return main(["--study", "held", "--output", str(root / "out"), *args])


def test_the_test_dates_scored_again_equal_the_report_bit_for_bit(study: Path) -> None:
    report = json.loads((study / "out" / "held" / REPORT_FILE).read_text())
    first, last = report["test_dates"]
    out = study / "scores.parquet"
    assert _predict(study, "--source", str(study / "panel.parquet"), "--dates",
                    f"{first}:{last}", "--out", str(out)) == 0
    scores = pl.read_parquet(out)
    held = pl.read_parquet(study / "out" / "held" / PREDICTIONS_FILE).filter(
        pl.col("trial") == report["chosen"])
    joined = held.join(scores, on=["date", "code"], how="left")
    assert joined["score"].null_count() == 0
    assert np.array_equal(joined["score"].to_numpy(), joined["pred"].to_numpy())
    meta = read_metadata(out)
    assert meta["trial"] == report["chosen"] and meta["study"] == "held"
    assert meta["model_sha256"] == report["identity"]["model_sha256"][str(report["chosen"])]
    assert len(meta["source_sha256"]) == 64 and meta["features"]
    # rank 1 is each date's highest score; quantile 5 its top fifth
    day = scores.filter(pl.col("date") == scores["date"].max()).sort("rank")
    assert day["score"].to_list() == sorted(day["score"].to_list(), reverse=True)
    assert day["quantile"][0] == 5 and day["quantile"][-1] == 1


def test_a_new_date_is_scored_alone_and_earlier_dates_do_not_move(study: Path) -> None:
    panel = pl.read_parquet(study / "panel.parquet")
    last = panel["date"].max()
    today = panel.filter(pl.col("date") == last).with_columns(
        pl.col("date") + pl.duration(days=3))
    features = [c for c in panel.columns if c.startswith("f_")]
    extended = pl.concat([panel, today]).select("date", "code", *features)  # no targets today
    extended.write_parquet(study / "extended.parquet")
    assert _predict(study, "--source", str(study / "extended.parquet"), "--out",
                    str(study / "today.csv")) == 0
    scored = pl.read_csv(study / "today.csv")
    assert scored["date"].unique().to_list() == [str(today["date"][0])]
    assert scored.height == today.height
    assert read_metadata(study / "today.csv")["dates"] == [str(today["date"][0])]
    before = study / "before.parquet"
    after = study / "after.parquet"
    span = f"{panel['date'].unique().sort()[-30]}:{last}"
    assert _predict(study, "--source", str(study / "panel.parquet"), "--dates", span,
                    "--out", str(before)) == 0
    assert _predict(study, "--source", str(study / "extended.parquet"), "--dates", span,
                    "--out", str(after)) == 0
    assert pl.read_parquet(before).equals(pl.read_parquet(after))


def test_a_panel_that_does_not_fit_is_refused_and_nothing_written(study: Path, capsys) -> None:
    panel = pl.read_parquet(study / "panel.parquet")
    panel.rename({"f_own": "f_owner"}).write_parquet(study / "renamed.parquet")
    out = study / "refused.parquet"
    assert _predict(study, "--source", str(study / "renamed.parquet"), "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "missing f_own (renamed? 'f_owner' for 'f_own'?)" in err
    assert not out.exists()
    short = panel.filter(pl.col("date") <= panel["date"].unique().sort()[5])
    short.write_parquet(study / "short.parquet")
    assert _predict(study, "--source", str(study / "short.parquet"), "--out", str(out)) == 2
    assert "dates of history before a scored date" in capsys.readouterr().err
    assert not out.exists()
    assert _predict(study, "--source", str(study / "panel.parquet"), "--model", "trial:9",
                    "--out", str(out)) == 2
    assert "is not a complete trial" in capsys.readouterr().err


def test_fold_ensemble_of_a_holdout_trial_is_refused(study: Path, capsys) -> None:
    out = study / "never.parquet"
    assert _predict(study, "--source", str(study / "panel.parquet"), "--fold-ensemble",
                    "--out", str(out)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and err[0].startswith("error: trial ")
    err = err[0]
    assert "no fold models to average" in err
    assert "drop --fold-ensemble" in err and not out.exists()


def test_blend_scores_are_the_reports_blend_and_reach_today(study: Path) -> None:
    """``--blend``: the model's and ridge's per-date z-scores averaged as the report's blend;
    on the test dates its scores give the report's blend figures, and a date with no return
    yet is scored too (every present stock)."""
    from trainers.atft_gat.heldout import HELDOUT

    report = json.loads((study / "out" / "held" / REPORT_FILE).read_text())
    first, last = report["test_dates"]
    out = study / "blend.parquet"
    assert _predict(study, "--source", str(study / "panel.parquet"), "--dates",
                    f"{first}:{last}", "--blend", "--out", str(out)) == 0
    meta = read_metadata(out)
    assert meta["blend"]["with"] == "linear" and meta["blend"]["rows_dropped"] == 0
    assert "report's blend" in meta["columns"]["score"]
    held = pl.read_parquet(study / "out" / "held" / PREDICTIONS_FILE).filter(
        pl.col("trial") == report["chosen"])
    rows = held.join(pl.read_parquet(out), on=["date", "code"], how="inner")
    assert rows.height == held.height
    trained = HELDOUT.load(study / "out" / "held" / f"trial_{report['chosen']}")
    figures = HELDOUT.score(rows.drop("pred").rename({"score": "pred"}), trained)[0]
    for name in ("sharpe", "sharpe_net", "rank_ic", "turnover"):
        assert figures[name]["value"] == pytest.approx(report["blend"]["test"][name]["value"],
                                                       rel=1e-9, abs=1e-12), name
    # the blend is not the model alone
    plain = HELDOUT.score(held, trained)[0]
    assert figures["rank_ic"]["value"] != plain["rank_ic"]["value"]
    # today, no return yet: every stock of the date is scored
    panel = pl.read_parquet(study / "panel.parquet")
    today = panel.filter(pl.col("date") == panel["date"].max()).with_columns(
        pl.col("date") + pl.duration(days=3))
    features = [c for c in panel.columns if c.startswith("f_")]
    pl.concat([panel, today]).select("date", "code", *features).write_parquet(
        study / "extended_blend.parquet")
    assert _predict(study, "--source", str(study / "extended_blend.parquet"), "--blend",
                    "--out", str(study / "today_blend.parquet")) == 0
    assert pl.read_parquet(study / "today_blend.parquet").height == today.height


def test_blend_with_a_refit_model_is_refused(study: Path, capsys) -> None:
    assert _predict(study, "--source", str(study / "panel.parquet"), "--model", "refit",
                    "--blend", "--out", str(study / "never.parquet")) == 2
    assert "drop --blend or --model refit" in capsys.readouterr().err
    assert not (study / "never.parquet").exists()
