"""``python -m hpo.monitor``: the dates after the test period, scored once each, beside the
baselines, with a verdict against validation."""

from __future__ import annotations

import json
import math
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from hpo.monitor import MIN_LIVE_DATES, figures, main, verdict
from tests.hpo.test_predict import run_file_study
from trainers.atft_gat.synthetic import generate_market
from trainers.metrics import per_date_metrics

N_STUDY_DATES = 200


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-trial study on the first 200 dates of a 260-date panel file; ``grown.parquet``
    holds all 260, ``early.parquet`` 230 (the dates after the test period are the live
    ones)."""
    root = tmp_path_factory.mktemp("monitor")
    market = generate_market(n_stocks=24, n_dates=260, seed=0, difficulty="easy")
    days = market["date"].unique().sort()
    market.filter(pl.col("date") <= days[N_STUDY_DATES - 1]).write_parquet(
        root / "panel.parquet")
    market.write_parquet(root / "grown.parquet")
    market.filter(pl.col("date") <= days[229]).write_parquet(root / "early.parquet")
    run_file_study(root)
    return root


def _test_end(root: Path) -> date:
    from hpo.heldout import REPORT_FILE

    report = json.loads((root / "out" / "held" / REPORT_FILE).read_text())
    return date.fromisoformat(report["test_dates"][1])


def _realised(path: Path, end: date) -> list[date]:
    frame = pl.read_parquet(path).filter(pl.col("ret_1d").is_finite() & (pl.col("date") > end))
    return frame["date"].unique().sort().to_list()


def _monitor(root: Path, source: str, *args: str) -> int:
    return main(["--study", "held", "--output", str(root / "out"), "--source",
                 str(root / source), *args])


def test_new_dates_are_scored_once_beside_the_baselines(study: Path, capsys) -> None:
    history = study / "out" / "held" / "monitor" / "monitor.parquet"
    assert _monitor(study, "early.parquet") == 0
    first = capsys.readouterr().out
    early = pl.read_parquet(history)
    live_days = early.filter(pl.col("series") == "model")["date"]
    # every date after the test period whose 1-day return is realised: the study's own last
    # dates too (their 20-day returns were not realised when it ran)
    end = _test_end(study)
    expected = _realised(study / "early.parquet", end)
    assert live_days.to_list() == expected
    assert f"{len(expected)} new date(s) scored" in first
    assert set(early["series"].unique()) == {"model", "best_feature", "linear", "blend"}
    # Scored again: nothing new, nothing moves.
    assert _monitor(study, "early.parquet") == 0
    assert "0 new date(s) scored" in capsys.readouterr().out
    assert pl.read_parquet(history).equals(early)
    # More dates: only those are added, the earlier rows stay as they were.
    assert _monitor(study, "grown.parquet", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    grown = pl.read_parquet(history)
    everything = _realised(study / "grown.parquet", end)
    assert summary["added"] == len(everything) - len(expected) == 29
    assert grown.join(early, on=["series", "date"], how="semi").equals(early)
    assert grown.filter(pl.col("series") == "model")["date"].to_list() == everything
    # The model's per-date figures are its scores through the study's book (here the plain
    # quintile book, 5 bps): recomputed from hpo.predict's scores of the same dates.
    from hpo.predict import main as predict_main

    out = study / "live_scores.parquet"
    assert predict_main(["--study", "held", "--output", str(study / "out"), "--source",
                         str(study / "grown.parquet"), "--dates",
                         f"{expected[0]}:{everything[-1]}", "--out", str(out)]) == 0
    market = pl.read_parquet(study / "grown.parquet").select("date", "code", "ret_1d")
    rows = pl.read_parquet(out).join(market, on=["date", "code"]).filter(
        pl.col("ret_1d").is_finite()).sort("date", "code")
    expect = per_date_metrics(rows["date"].to_numpy(), rows["score"].to_numpy(),
                              rows["ret_1d"].to_numpy(), codes=rows["code"].to_numpy())
    got = grown.filter(pl.col("series") == "model").sort("date")
    # the stored early rows were scored with the book's chain from the first live date too
    np.testing.assert_allclose(got["rank_ic"].to_numpy(), expect["rank_ic"].to_numpy(),
                               atol=1e-9)
    np.testing.assert_allclose(got["long_short_net"].to_numpy(),
                               expect["long_short_net"].to_numpy(), atol=1e-9, equal_nan=True)
    # The blend's per-date figures are hpo.predict --blend's scores through the same book.
    blend_out = study / "live_blend.parquet"
    assert predict_main(["--study", "held", "--output", str(study / "out"), "--source",
                         str(study / "grown.parquet"), "--dates",
                         f"{expected[0]}:{everything[-1]}", "--blend", "--out",
                         str(blend_out)]) == 0
    rows = pl.read_parquet(blend_out).join(market, on=["date", "code"]).filter(
        pl.col("ret_1d").is_finite()).sort("date", "code")
    expect = per_date_metrics(rows["date"].to_numpy(), rows["score"].to_numpy(),
                              rows["ret_1d"].to_numpy(), codes=rows["code"].to_numpy())
    got = grown.filter(pl.col("series") == "blend").sort("date")
    np.testing.assert_allclose(got["rank_ic"].to_numpy(), expect["rank_ic"].to_numpy(),
                               atol=1e-9)
    np.testing.assert_allclose(got["long_short_net"].to_numpy(),
                               expect["long_short_net"].to_numpy(), atol=1e-9, equal_nan=True)
    # The files of the morning.
    folder = study / "out" / "held" / "monitor"
    assert (folder / "monitor.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (folder / "monitor.html").read_text()
    assert "best feature (" in page and "ridge (every feature)" in page
    assert summary["verdict"] in page.replace("&#x27;", "'")
    labels = [r[0] for r in summary["rows"][1:]]
    assert labels[0] == "model (live)" and labels[-1] == "model (validation)"


def test_a_panel_without_new_dates_or_that_does_not_fit_is_refused(study: Path,
                                                                   capsys) -> None:
    folder = study / "out" / "held" / "monitor"
    before = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    panel = pl.read_parquet(study / "panel.parquet")
    panel.filter(pl.col("date") <= _test_end(study)).write_parquet(study / "old.parquet")
    assert _monitor(study, "old.parquet") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: panel ") and "no date after the study's test period" in err
    assert "\n" not in err
    renamed = pl.read_parquet(study / "grown.parquet").rename({"f_own": "f_owner"})
    renamed.write_parquet(study / "renamed.parquet")
    assert _monitor(study, "renamed.parquet") == 2
    assert "'f_owner' for 'f_own'?" in capsys.readouterr().err
    assert _monitor(study, "missing.parquet") == 2
    assert "does not exist" in capsys.readouterr().err
    after = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    assert after == before


def _days(rank_ic: np.ndarray) -> pl.DataFrame:
    n = len(rank_ic)
    rng = np.random.default_rng(0)
    return pl.DataFrame({"date": np.arange(n), "rank_ic": rank_ic,
                         "long_short": rng.normal(0.001, 0.01, n),
                         "long_short_net": rng.normal(0.0, 0.01, n),
                         "turnover": np.full(n, 0.5)})


def test_the_verdict_separates_a_decayed_signal_from_noise() -> None:
    rng = np.random.default_rng(1)
    scale = {"periods_per_year": 252.0, "horizon": 1}
    valid = figures(_days(rng.normal(0.05, 0.1, 400)), **scale)
    assert valid["rank_ic"]["se"] == pytest.approx(0.1 / math.sqrt(400), rel=0.1)
    few = figures(_days(rng.normal(0.05, 0.1, MIN_LIVE_DATES - 1)), **scale)
    assert verdict(few, valid).startswith("too few live dates to judge (19 of the 20")
    dead = figures(_days(rng.normal(0.0, 0.1, 250)), **scale)
    assert verdict(dead, valid).startswith("WEAKER: live RankIC")
    same = figures(_days(rng.normal(0.05, 0.1, 250)), **scale)
    assert verdict(same, valid).startswith("in line: live RankIC")
    # Under the null (live = validation in law) the verdict says WEAKER about 2.3 % of the time.
    weaker = sum(verdict(figures(_days(rng.normal(0.05, 0.1, 100)), **scale),
                         figures(_days(rng.normal(0.05, 0.1, 300)), **scale)
                         ).startswith("WEAKER") for _ in range(400))
    assert weaker / 400 < 0.06


def _fresh_copy(study: Path, name: str) -> Path:
    """The study's output copied without its monitor folder: a first morning."""
    import shutil

    root = study / name
    shutil.copytree(study / "out", root / "out")
    shutil.rmtree(root / "out" / "held" / "monitor", ignore_errors=True)
    for panel in ("early.parquet", "grown.parquet"):
        shutil.copy(study / panel, root / panel)
    return root


def test_a_morning_scores_only_the_new_dates_and_reuses_the_fitted_baselines(
        study: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import trainers.atft_gat.scoring as scoring
    import trainers.baselines as baselines

    steps, once = _fresh_copy(study, "steps"), _fresh_copy(study, "once")
    requested: list[str] = []
    real = scoring.score_panel

    def spy(trained, source, *, dates, **kw):  # noqa: ANN001, ANN003, ANN202
        requested.append(dates)
        return real(trained, source, dates=dates, **kw)

    monkeypatch.setattr(scoring, "score_panel", spy)
    assert _monitor(steps, "early.parquet") == 0
    folder = steps / "out" / "held" / "monitor"
    assert (folder / "scores.parquet").is_file() and (folder / "baselines.npz").is_file()
    last = pl.read_parquet(folder / "scores.parquet")["date"].max()
    assert _monitor(steps, "early.parquet") == 0  # nothing realised since: nothing scored
    assert len(requested) == 1
    monkeypatch.setattr(baselines, "panel_baselines", lambda *a, **k: pytest.fail("refitted"))
    assert _monitor(steps, "grown.parquet") == 0
    assert requested[1] == f"{last + (date(2000, 1, 2) - date(2000, 1, 1))}:"
    monkeypatch.undo()
    assert _monitor(once, "grown.parquet") == 0
    capsys.readouterr()
    a = pl.read_parquet(folder / "monitor.parquet").drop("scored_at", "model_sha256")
    b = pl.read_parquet(once / "out" / "held" / "monitor" / "monitor.parquet").drop(
        "scored_at", "model_sha256")
    assert a.height == b.height > 0
    for column in ("rank_ic", "long_short", "long_short_net", "turnover"):
        np.testing.assert_allclose(a[column].to_numpy(), b[column].to_numpy(), atol=1e-12,
                                   equal_nan=True)
