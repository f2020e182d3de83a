"""``python -m hpo.evaluate``: the held-out test period, opened once, after selection.

One tiny ATFT-GAT study (3 trials, 2 objectives) is run through ``hpo.run``, which evaluates it
when it reaches its target; the tests read its report, recompute it from the written
predictions with scipy, and rerun ``hpo.evaluate`` on copies of the study.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
from pathlib import Path

import numpy as np
import optuna
import polars as pl
import pytest
from optuna.trial import TrialState
from scipy import stats

from hpo import api
from hpo.evaluate import CHOICE_RULE_FRONT, main
from hpo.heldout import PREDICTIONS_FILE, REPORT_FILE, read_summary, render_lines
from hpo.run import main as run_main
from tests.hpo.test_run import study_file
from tests.trainers.test_turnover import naive_turnover_and_net
from trainers.atft_gat.synthetic import FEATURE_NAMES
from trainers.metrics import predictions_metrics_with_se

STUDY = """
name = "held"
workload = "atft_gat"
n_trials = 3
[[objectives]]
metric = "sharpe"
direction = "maximize"
[[objectives]]
metric = "val_loss"
direction = "minimize"
[sampler]
name = "random"
seed = 0
[data]
n_stocks = 24
n_dates = 220
market_difficulty = "easy"
val_fraction = 0.2
test_fraction = 0.2
purge = 20
[trainer]
epochs = 1
max_steps_per_epoch = 3
hidden_size = 16
attn_heads = 2
gat_heads = 2
gat_layers = 1
lookback = 10
batch_size = 48
graph_window = 20
graph_k = 4
warmup_steps = 0
[search_space.lr]
type = "float"
low = 1e-4
high = 1e-2
log = true
"""
EULER_GAMMA = 0.5772156649015329


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study, run to its target by ``hpo.run`` (which writes the test report)."""
    root = tmp_path_factory.mktemp("evaluate")
    (root / "held.toml").write_text(STUDY)
    assert api.run_study(str(root / "held.toml"), output=str(root / "out")) == 0
    return root


@pytest.fixture
def copy(ran: Path, tmp_path: Path) -> Path:
    """A private copy of the study (database, trial directories, cache, report)."""
    shutil.copytree(ran / "out", tmp_path / "out")
    return tmp_path / "out"


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="held", storage=f"sqlite:///{out / 'hpo.db'}")


def _report(out: Path) -> dict:
    return json.loads((out / "held" / REPORT_FILE).read_text())


def _by_scipy(frame: pl.DataFrame) -> dict[str, float]:
    """Sharpe, RankIC, IC and ICIRs, date by date with scipy, independent of trainers.metrics."""
    rank_ic, ic, long_short = [], [], []
    for _, day in frame.sort("date").group_by("date", maintain_order=True):
        pred, target = day["pred"].to_numpy(), day["target"].to_numpy()
        rank_ic.append(stats.spearmanr(pred, target).statistic)
        ic.append(stats.pearsonr(pred, target).statistic)
        n_leg = max(1, math.floor(0.2 * len(pred) + 1e-9))
        order = np.argsort(pred, kind="stable")
        long_short.append(target[order[-n_leg:]].mean() - target[order[:n_leg]].mean())
    rank_ic, ic, ls = np.array(rank_ic), np.array(ic), np.array(long_short)
    return {"sharpe": ls.mean() / ls.std(ddof=1) * math.sqrt(252), "rank_ic": rank_ic.mean(),
            "ic": ic.mean(), "icir": ic.mean() / ic.std(ddof=1),
            "rank_icir": rank_ic.mean() / rank_ic.std(ddof=1), "_ls": ls}


def test_report_equals_scipy_recomputed_from_the_predictions(ran: Path) -> None:
    out = ran / "out"
    report = _report(out)
    study = _study(out)
    preds = pl.read_parquet(out / "held" / PREDICTIONS_FILE)
    front = sorted(t.number for t in study.best_trials)
    assert [t["number"] for t in report["trials"]] == front
    assert sorted(preds["trial"].unique().to_list()) == front
    test_start = np.datetime64(report["test_dates"][0])
    assert (preds["date"].to_numpy() >= test_start).all()
    for trial in report["trials"]:
        rows = preds.filter(pl.col("trial") == trial["number"]).drop("trial")
        val = pl.read_parquet(out / "held" / f"trial_{trial['number']}" / "predictions.parquet")
        for period, frame in (("test", rows), ("validation", val)):
            expected = _by_scipy(frame)
            for name in ("sharpe", "rank_ic", "ic", "icir", "rank_icir"):
                assert trial[period][name]["value"] == pytest.approx(expected[name], abs=1e-9,
                                                                     rel=0), (period, name)
            # Turnover and the net Sharpe ratio at the default 5 bps, by the README's
            # definitions, one date and one stock at a time.
            turnover, sharpe_net = naive_turnover_and_net(
                frame["date"].to_numpy(), frame["code"].to_numpy(), frame["pred"].to_numpy(),
                frame["target"].to_numpy(), cost_bps=5.0)
            assert trial[period]["turnover"]["value"] == pytest.approx(turnover, rel=1e-12)
            assert trial[period]["sharpe_net"]["value"] == pytest.approx(sharpe_net, rel=1e-9)
            assert trial[period]["sharpe_net"]["value"] < trial[period]["sharpe"]["value"]
            # The standard errors are those of the bootstrap over this very file.
            se = predictions_metrics_with_se(frame)
            assert trial[period]["sharpe"]["se"] == se["sharpe"]["se"] > 0
            assert trial[period]["turnover"]["se"] == se["turnover"]["se"] > 0
        # The validation figures are the objective values and attrs the study stored.
        stored = study.trials[trial["number"]]
        assert trial["validation"]["sharpe"]["value"] == pytest.approx(stored.values[0],
                                                                       abs=1e-12)
        for name in ("turnover", "sharpe_net"):
            assert trial["validation"][name]["value"] == pytest.approx(
                stored.user_attrs[name], rel=1e-12)
    assert report["cost_bps"] == 5.0


def test_chosen_trial_and_its_deflated_sharpe(ran: Path) -> None:
    """The chosen trial is the front's best validation Sharpe; its deflated Sharpe ratio is
    Bailey & Lopez de Prado's formula over every complete trial's validation Sharpe."""
    out = ran / "out"
    report, study = _report(out), _study(out)
    front = study.best_trials
    chosen = max(front, key=lambda t: (t.user_attrs["sharpe"], -t.number))
    assert report["chosen"] == chosen.number and report["rule"] == CHOICE_RULE_FRONT
    assert [t["number"] for t in report["trials"] if t["chosen"]] == [chosen.number]

    dsr = report["deflated_sharpe"]
    sharpes = np.array([t.user_attrs["sharpe"] for t in study.trials])
    assert dsr["n_trials"] == len(study.trials) == 3
    assert dsr["sharpe_variance"] == pytest.approx(sharpes.var(ddof=1), rel=1e-12)
    val = pl.read_parquet(out / "held" / f"trial_{chosen.number}" / "predictions.parquet")
    ls = _by_scipy(val)["_ls"]
    sr = ls.mean() / ls.std(ddof=1)  # per day
    v = sharpes.var(ddof=1) / 252
    sr0 = math.sqrt(v) * ((1 - EULER_GAMMA) * stats.norm.ppf(1 - 1 / 3)
                          + EULER_GAMMA * stats.norm.ppf(1 - 1 / (3 * math.e)))
    skew, kurt = stats.skew(ls), stats.kurtosis(ls, fisher=False)
    expected = stats.norm.cdf((sr - sr0) * math.sqrt(len(ls) - 1)
                              / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2))
    assert dsr["value"] == pytest.approx(expected, abs=1e-9)
    assert dsr["of"] == "the chosen trial's validation Sharpe (gross)"
    assert 0.0 <= report["test_psr"]["value"] <= 1.0


def test_baselines_beside_the_trials(ran: Path) -> None:
    """The oracle, the best single feature and the ridge fit, on the same dates and with the
    same figures and standard errors as the trials; both fitted baselines chosen on training
    dates (the ridge penalty on validation)."""
    report = _report(ran / "out")
    for period in ("validation", "test"):
        base = report["baselines"][period]
        assert math.isfinite(base["oracle"]["sharpe"]) and base["oracle"]["rank_ic"] > 0.05
        best, linear = base["best_feature"], base["linear"]
        assert best["chosen_on"] == "training dates" and best["feature"][0] in "+-"
        assert best["feature"][1:] in FEATURE_NAMES
        for row in (best, linear):
            assert row["sharpe"]["se"] > 0 and math.isfinite(row["rank_ic"]["value"])
            assert row["n_dates"]["value"] == report["trials"][0][period]["n_dates"]["value"]
        assert str(linear["alpha"]) in linear["validation_rank_ic_by_alpha"]
    summary = read_summary(_study(ran / "out"))
    labels = list(summary["baselines"])
    assert labels == ["oracle", f"best feature ({best['feature']})", "ridge (every feature)"]
    assert summary["report_id"] == report["report_id"]
    # The chosen trial blended with ridge (hpo.heldout.blend), on the same dates; its paired
    # differences are the differences of the figures.
    blend, chosen = report["blend"], next(t for t in report["trials"] if t["chosen"])
    assert blend["with"] == "ridge (every feature)"
    for period in ("validation", "test"):
        assert blend[period]["n_dates"]["value"] == chosen[period]["n_dates"]["value"]
        assert blend["minus_baseline"][period]["sharpe_net"]["value"] == pytest.approx(
            blend[period]["sharpe_net"]["value"]
            - report["baselines"][period]["linear"]["sharpe_net"]["value"], abs=1e-9)
    assert blend["minus_chosen"]["test"]["rank_ic"]["value"] == pytest.approx(
        blend["test"]["rank_ic"]["value"] - chosen["test"]["rank_ic"]["value"], abs=1e-12)
    assert summary["blend"]["with"] == "ridge (every feature)"


def test_rerun_leaves_the_same_file_and_force_rewrites_the_same_bytes(
        copy: Path, capsys: pytest.CaptureFixture) -> None:
    path = copy / "held" / REPORT_FILE
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    assert main(["--study", "held", "--output", str(copy)]) == 0
    assert "unchanged" in capsys.readouterr().out
    assert path.stat().st_mtime_ns == mtime
    assert main(["--study", "held", "--output", str(copy), "--force"]) == 0
    assert "written" in capsys.readouterr().out
    assert path.read_bytes() == before


def test_a_changed_front_gets_a_fresh_report_and_trials_never_see_test_figures(
        copy: Path, capsys: pytest.CaptureFixture) -> None:
    """A new trial that dominates the front (trial 0's model copied as its own) makes the
    report out of date; status says so; evaluate refuses to look at the test period again
    until --reopen, then writes a fresh report for the new front and records the second
    opening. No trial's values or attrs change."""
    from hpo.status import main as status_main

    study = _study(copy)
    template = study.trials[0]
    shutil.copytree(copy / "held" / "trial_0", copy / "held" / "trial_3")
    study.add_trial(optuna.trial.create_trial(
        params=template.params, distributions=template.distributions, values=[99.0, 0.0],
        user_attrs={**template.user_attrs, "sharpe": 99.0}))
    old = _report(copy)
    assert status_main(["--study", "held", "--output", str(copy)]) == 0
    hint = next(line for line in capsys.readouterr().out.splitlines() if "out of date" in line)
    before = [(t.values, t.user_attrs, t.system_attrs) for t in _study(copy).trials]

    capsys.readouterr()
    assert main(["--study", "held", "--output", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "was opened 1 time(s)" in err and "Pass --reopen" in err
    assert _report(copy) == old  # nothing looked at, nothing written
    # the hint status printed works as printed (storage, output and --reopen included)
    command = shlex.split(hint[hint.index("python -m hpo.evaluate"):])
    assert command[:3] == ["python", "-m", "hpo.evaluate"] and command[-1] == "--reopen"
    assert main(command[3:]) == 0
    assert "warning: the test period has been looked at 2 times" in capsys.readouterr().out
    new = _report(copy)
    assert new["report_id"] != old["report_id"]
    assert [t["number"] for t in new["trials"]] == [3] and new["chosen"] == 3
    assert new["deflated_sharpe"]["n_trials"] == 4
    openings = _study(copy).user_attrs["test_openings"]
    assert [(o["opening"], o["chosen"], o["reopened"]) for o in openings] == [
        (1, old["chosen"], False), (2, 3, True)]
    assert new["test_openings"] == openings and openings[0]["report_id"] == old["report_id"]
    # The same look again, even forced, is no new opening.
    assert main(["--study", "held", "--output", str(copy), "--force"]) == 0
    assert len(_study(copy).user_attrs["test_openings"]) == 2
    after = [(t.values, t.user_attrs, t.system_attrs) for t in _study(copy).trials]
    assert after == before


def test_status_export_and_note_show_validation_and_test_side_by_side(
        copy: Path, capsys: pytest.CaptureFixture) -> None:
    from optuna_dashboard import get_note

    from hpo.export import main as export_main
    from hpo.status import main as status_main

    capsys.readouterr()
    for cli in (status_main, export_main):
        assert cli(["--study", "held", "--output", str(copy)]) == 0
        text = capsys.readouterr().out
        assert "validation sharpe" in text and "test sharpe" in text and "oracle" in text
        assert "deflated Sharpe ratio" in text
    assert status_main(["--study", "held", "--output", str(copy), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["test_report_current"] is True
    trial = status["test_report"]["trials"][0]
    assert set(trial) == {"number", "chosen", "validation", "test"}
    assert "| trial | validation sharpe | test sharpe" in get_note(_study(copy))


def test_run_summary_shows_the_report_and_a_failed_evaluation_keeps_the_study(
        copy: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import hpo.evaluate

    args = ["--study", str(copy.parent / "held.toml"), "--output", str(copy)]
    (copy.parent / "held.toml").write_text(STUDY)
    assert run_main(args) == 0  # target already reached: nothing runs, the report is current
    out = capsys.readouterr().out
    assert "validation sharpe" in out and "test sharpe" in out

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(hpo.evaluate, "evaluate_study", broken)
    assert run_main([*args, "--n-trials", "3"]) == 0
    err = capsys.readouterr().err
    assert "test evaluation failed (RuntimeError: disk full); the study is intact" in err
    assert "python -m hpo.evaluate --study held" in err
    assert len(_study(copy).trials) == 3


def test_not_evaluated_before_the_target(copy: Path) -> None:
    from hpo.run import evaluate_when_complete

    (copy / "held" / REPORT_FILE).unlink()
    evaluate_when_complete(_study(copy), output=copy, url="sqlite:///x", target=4)
    assert not (copy / "held" / REPORT_FILE).exists()


def test_workload_without_test_period_and_unknown_study(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    path = study_file(tmp_path)
    out = tmp_path / "out"
    assert api.run_study(str(path), output=str(out)) == 0
    capsys.readouterr()
    assert main(["--study", "toy", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == ("error: workload 'tests.hpo.toy_workload' of study 'toy' has no held-out "
                   "test period yet; only atft_gat studies can be evaluated\n")
    assert not (out / "toy" / REPORT_FILE).exists()
    assert main(["--study", "nope", "--output", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: unknown study 'nope'")


def test_the_chosen_trial_minus_its_best_baseline_with_a_paired_se(ran: Path) -> None:
    """The baseline with the best validation Sharpe is compared; each difference is the
    chosen trial's figure minus the baseline's, on validation and on test, and the printed
    table shows the row and a verdict."""
    out = ran / "out"
    report = _report(out)
    versus = report["versus_baseline"]
    base = report["baselines"]
    best = max(("best_feature", "linear"),
               key=lambda n: base["validation"][n]["sharpe"]["value"])
    assert versus["baseline"] == best and versus["label"] == base["test"][best]["label"]
    every = report["versus_baselines"]
    assert set(every) == {"best_feature", "linear"}
    assert every[best]["test"] == versus["test"]
    chosen = next(t for t in report["trials"] if t["chosen"])
    for period in ("validation", "test"):
        for name in ("sharpe", "rank_ic", "sharpe_net", "turnover"):
            expected = chosen[period][name]["value"] - base[period][best][name]["value"]
            assert versus[period][name]["value"] == pytest.approx(expected, abs=1e-12)
            assert versus[period][name]["se"] > 0
    lines = render_lines(read_summary(_study(out)))
    assert any(line.strip().startswith(f"chosen - {versus['label']}") for line in lines)
    assert any(f"on test, trial {report['chosen']} against {versus['label']}" in line
               for line in lines)


def test_the_tear_sheet_is_written_and_attached_to_the_study(ran: Path) -> None:
    """Nine PNGs and one self-contained HTML page beside the report, their figures those of
    the report and of the net returns (annual return, volatility, maximum drawdown, monthly
    returns and the RankIC decay recomputed here), the report's own lines on the page, every
    file an artifact of the study (what optuna-dashboard lists)."""
    import re

    from trainers.metrics import per_date_metrics
    from trainers.tearsheet import HTML_NAME, PNG_NAMES, quantile_returns

    out = ran / "out"
    folder = out / "held"
    report = _report(out)
    assert report["files"]["tear_sheet"] == HTML_NAME
    for name in PNG_NAMES:
        assert (folder / name).read_bytes().startswith(b"\x89PNG")
    page = (folder / HTML_NAME).read_text()
    assert page.count("data:image/png;base64,") == len(PNG_NAMES) == 9 and "http" not in page
    # the report's own lines: validation beside test with SEs, DSR, PBO, openings
    for words in ("validation sharpe", "deflated Sharpe ratio",
                  "probability of backtest overfitting", "test period opened 1 time(s)"):
        assert words in page, words
    chosen = next(t for t in report["trials"] if t["chosen"])
    row = re.search(rf"<tr><td>trial {chosen['number']} \(chosen\)</td>(.*?)</tr>", page)
    cells = re.findall(r"<td>([^<]*)</td>", row.group(1))
    for cell, name in zip(cells[:4], ("sharpe", "sharpe_net", "rank_ic", "turnover"),
                          strict=True):
        assert float(cell) == pytest.approx(chosen["test"][name]["value"], rel=1e-3)
    # the blend of the chosen trial and ridge is a row of the sheet, with the report's figures
    blend_row = re.search(
        r"<tr><td>chosen \+ ridge \(every feature\) \(blend\)</td>(.*?)</tr>", page)
    blend_cells = re.findall(r"<td>([^<]*)</td>", blend_row.group(1))
    assert float(blend_cells[1]) == pytest.approx(
        report["blend"]["test"]["sharpe_net"]["value"], rel=1e-3)
    # annual return (compounded), annual volatility and maximum drawdown of the net returns
    test_rows = pl.read_parquet(folder / PREDICTIONS_FILE).filter(
        pl.col("trial") == chosen["number"])
    net = np.nan_to_num(per_date_metrics(
        test_rows["date"].to_numpy(), test_rows["pred"].to_numpy(),
        test_rows["target"].to_numpy(), codes=test_rows["code"].to_numpy())[
        "long_short_net"].to_numpy())
    equity = np.cumprod(1 + net)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    ppy = report["periods_per_year"]
    want = (equity[-1] ** (ppy / len(net)) - 1, net.std(ddof=1) * np.sqrt(ppy),
            (equity / peak - 1).min())
    for cell, value in zip(cells[4:], want, strict=True):
        assert float(cell) == pytest.approx(value, rel=1e-3, abs=1e-12)
    feature = report["baselines"]["test"]["best_feature"]["feature"]
    for label in ("ridge (every feature)", f"best feature ({feature})"):
        assert f"<td>{label}</td>" in page
    assert "5 bps per unit traded" in page
    names = {m.filename for m in optuna.artifacts.get_all_artifact_meta(_study(out))}
    assert {HTML_NAME, *PNG_NAMES} <= names
    # The quintile chart's numbers: the chosen trial's mean demeaned target per quintile.
    preds = pl.read_parquet(folder / PREDICTIONS_FILE)
    rows = preds.filter(pl.col("trial") == chosen["number"])
    q = quantile_returns(rows)
    by_hand = []
    for _, day in rows.group_by("date"):
        order = np.argsort(day["pred"].to_numpy(), kind="stable")
        buckets = np.arange(len(order)) * 5 // len(order)
        target = day["target"].to_numpy()[order]
        target = target - target.mean()
        by_hand.append([target[buckets == k].mean() for k in range(5)])
    np.testing.assert_allclose(q, np.mean(by_hand, axis=0), rtol=1e-9, atol=1e-15)
    # Monthly returns: each calendar month's net returns compounded (quantstats' definition).
    from trainers.tearsheet import ic_decay, monthly_returns

    per_date = per_date_metrics(rows["date"].to_numpy(), rows["pred"].to_numpy(),
                                rows["target"].to_numpy(), codes=rows["code"].to_numpy())
    months = monthly_returns(per_date["date"].to_numpy(), per_date["long_short_net"].to_numpy())
    for year, month, value in months.iter_rows():
        part = per_date.filter((pl.col("date").dt.year() == year)
                               & (pl.col("date").dt.month() == month))
        assert value == pytest.approx(
            np.prod(1 + np.nan_to_num(part["long_short_net"].to_numpy())) - 1, rel=1e-12)
    assert months.height == len({(d.year, d.month) for d in per_date["date"].to_list()})
    # Decay: lag 0 is the report's test RankIC; lag 2 pairs each date's predictions with the
    # same stocks' target two test dates later (scipy's Spearman, date by date).
    from scipy import stats

    mean, se = ic_decay(rows, lags=2)
    assert mean[0] == pytest.approx(chosen["test"]["rank_ic"]["value"], rel=1e-9)
    days = rows["date"].unique().sort().to_list()
    by_date = {d: rows.filter(pl.col("date") == d) for d in days}
    lagged = []
    for d, later in zip(days, days[2:], strict=False):
        pair = by_date[d].join(by_date[later].select("code", pl.col("target").alias("t2")),
                               on="code")
        lagged.append(stats.spearmanr(pair["pred"], pair["t2"]).statistic)
    assert mean[2] == pytest.approx(np.mean(lagged), rel=1e-9)
    assert se[2] == pytest.approx(np.std(lagged, ddof=1) / np.sqrt(len(lagged)), rel=1e-9)


def test_a_resumed_study_keeps_its_report_until_reopened(tmp_path: Path, capsys) -> None:
    """hpo.run opens the test period the first time the study reaches its target, and never
    again: more trials leave the report's chosen trial alone (a new front is named with the
    --reopen command), and the study records one opening."""
    study_path = tmp_path / "held.toml"
    study_path.write_text(STUDY.replace("n_trials = 3", "n_trials = 2"))
    out = tmp_path / "out"
    assert api.run_study(str(study_path), output=str(out)) == 0
    first = _report(out)
    assert api.run_study(str(study_path), output=str(out), n_trials=5) == 0
    study = _study(out)
    assert len(study.trials) == 5
    assert len(study.user_attrs["test_openings"]) == 1
    report = _report(out)
    assert report["chosen"] == first["chosen"]
    assert report["test_openings"] == study.user_attrs["test_openings"]
    if sorted(t.number for t in study.best_trials) != [t["number"] for t in first["trials"]]:
        assert "--reopen" in capsys.readouterr().err  # the front moved: said, not looked at


def test_auto_false_leaves_the_test_period_closed(tmp_path: Path) -> None:
    study_path = tmp_path / "held.toml"
    study_path.write_text(STUDY.replace("n_trials = 3", "n_trials = 1")
                          + "[evaluate]\nauto = false\n")
    out = tmp_path / "out"
    assert api.run_study(str(study_path), output=str(out)) == 0
    assert not (out / "held" / REPORT_FILE).exists()
    assert "test_openings" not in _study(out).user_attrs
    assert main(["--study", "held", "--output", str(out)]) == 0  # the first look, by hand
    assert len(_study(out).user_attrs["test_openings"]) == 1


def test_the_deflated_sharpe_counts_pruned_and_failed_trials(copy: Path) -> None:
    """Every trial that showed a validation Sharpe was searched: a pruned one (its last
    epoch's attrs) and one that failed after an epoch (its history) count; a surplus trial,
    which never ran, does not."""
    from optuna.distributions import FloatDistribution

    study = _study(copy)
    dist = {"lr": FloatDistribution(1e-4, 1e-2, log=True)}
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 1e-3}, distributions=dist, state=TrialState.PRUNED,
        user_attrs={"sharpe": 5.0, "pruned_at_epoch": 1}))
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 2e-3}, distributions=dist, state=TrialState.FAIL,
        user_attrs={"history": [{"epoch": 1, "sharpe": -2.0}], "fail_reason": "boom"}))
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 3e-3}, distributions=dist, state=TrialState.FAIL,
        user_attrs={"surplus": True}))
    assert main(["--study", "held", "--output", str(copy), "--force"]) == 0
    dsr = _report(copy)["deflated_sharpe"]
    assert dsr["trials_counted"] == [0, 1, 2, 3, 4]
    assert dsr["states_counted"] == {"complete": 3, "pruned": 1, "fail": 1}
    sharpes = [t.user_attrs["sharpe"] for t in _study(copy).trials[:3]] + [5.0, -2.0]
    assert dsr["sharpe_variance"] == pytest.approx(np.var(sharpes, ddof=1), rel=1e-12)
    assert dsr["about"].startswith("the Sharpe ratio the study selected on")


def test_pbo_is_cscv_over_the_trials_validation_returns(ran: Path) -> None:
    from trainers.heldout import ranking_returns
    from trainers.metrics.overfitting import effective_trials, probability_of_backtest_overfitting

    out = ran / "out"
    report = _report(out)
    columns = []
    for n in range(3):
        frame = pl.read_parquet(out / "held" / f"trial_{n}" / "predictions.parquet")
        columns.append(ranking_returns(frame).sort("date")["ret"].to_numpy())
    matrix = np.column_stack(columns)
    expected = probability_of_backtest_overfitting(matrix, blocks=16)
    pbo = report["pbo"]
    assert pbo["value"] == expected["value"] and pbo["trials"] == [0, 1, 2]
    assert pbo["splits"] == 12870 and pbo["dates"] == len(matrix)
    dsr = report["deflated_sharpe"]
    assert "effective" not in dsr and "P(DSR > 0.95)" in dsr["calibration"]
    assert dsr["trials_mean_correlation"] == pytest.approx(
        effective_trials(matrix)["mean_correlation"], rel=1e-12)
    lines = render_lines(read_summary(_study(out)))
    assert any("probability of backtest overfitting" in line for line in lines)


def test_study_user_attrs_stay_short_for_optunas_own_tables(ran: Path) -> None:
    """`optuna studies` prints every study user attr: the bulky records (the study file's
    content, the full test-report summary) are study system attrs; the user attr test_report
    is one line (chosen trial, headline test figures, where the report is)."""
    import json as json_
    import subprocess
    import sys

    study = _study(ran / "out")
    attrs_ = study.user_attrs
    assert "spec" not in attrs_
    assert set(attrs_["test_report"]) == {"file", "report_id", "chosen", "test_dates", "test"}
    assert len(json_.dumps(attrs_)) < 1200
    cli = Path(sys.executable).with_name("optuna")  # the console script beside this Python
    out = subprocess.run([str(cli), "studies", "--storage",
                          f"sqlite:///{ran / 'out' / 'hpo.db'}"], capture_output=True,
                         text=True, check=True).stdout
    assert max(len(line) for line in out.splitlines()) < 1400


def test_trial_user_attrs_stay_short_for_optunas_own_tables(ran: Path) -> None:
    """`optuna trials` prints every trial user attr: the per-epoch history, the data, split,
    graph and leakage-guard summaries and the timings are trial records (hpo.records), so a
    trial's row holds its metrics, book and reasons; every reader sees the records through
    ``trial_attrs``."""
    import json as json_
    import subprocess
    import sys

    from hpo.records import TRIAL_RECORDS, trial_attrs

    study = _study(ran / "out")
    for t in study.trials:
        assert not TRIAL_RECORDS & set(t.user_attrs), sorted(t.user_attrs)
        merged = trial_attrs(t)
        assert {"history", "data", "date_split", "leak_guard"} <= set(merged)
        assert len(json_.dumps(t.user_attrs)) < 1200
    cli = Path(sys.executable).with_name("optuna")
    out = subprocess.run([str(cli), "trials", "--study-name", study.study_name, "--storage",
                          f"sqlite:///{ran / 'out' / 'hpo.db'}"], capture_output=True,
                         text=True, check=True).stdout
    assert max(len(line) for line in out.splitlines()) < 1600
