"""A study with a turnover-aware book (``[portfolio]``): every trading figure of the trials,
the test report and the baselines is the book's, recomputed here from the written rows with
a plain per-date loop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna
import polars as pl
import pytest

from hpo import api
from hpo.config import load_study_spec
from hpo.heldout import REPORT_FILE
from tests.hpo.test_evaluate import STUDY
from tests.trainers.test_book import naive_books
from trainers.metrics import Book, Scoring

PORTFOLIO = """
[portfolio]
enter = 0.2
exit = 0.4
score_halflife = 2.0
cost_bps = [5, 0, 20]
"""
BOOK = Book(enter=0.2, exit=0.4, halflife=2.0)


def _sharpe_of(series: dict[int, float]) -> float:
    values = [series[k] for k in sorted(series)]
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean / sd * math.sqrt(252)


def _naive(frame: pl.DataFrame) -> dict[str, float]:
    _, gross, turnover, net = naive_books(frame["date"].to_numpy(), frame["code"].to_numpy(),
                                          frame["pred"].to_numpy(), frame["target"].to_numpy(),
                                          BOOK)
    return {"sharpe": _sharpe_of(gross), "sharpe_net": _sharpe_of(net),
            "turnover": sum(turnover.values()) / len(turnover)}


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("book")
    text = (STUDY.replace('name = "held"', 'name = "booked"').replace("n_trials = 3",
                                                                     "n_trials = 2")
            .replace('metric = "sharpe"', 'metric = "sharpe_net"'))
    (root / "booked.toml").write_text(text + PORTFOLIO)
    assert api.run_study(str(root / "booked.toml"), output=str(root / "out")) == 0
    return root


def test_trial_figures_are_the_books(ran: Path) -> None:
    out = ran / "out"
    study = optuna.load_study(study_name="booked", storage=f"sqlite:///{out / 'hpo.db'}")
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert done
    for t in done:
        frame = pl.read_parquet(out / "booked" / f"trial_{t.number}" / "predictions.parquet")
        want = _naive(frame)
        assert t.values[0] == pytest.approx(want["sharpe_net"], rel=1e-9)  # at 5 bps
        assert t.user_attrs["sharpe"] == pytest.approx(want["sharpe"], rel=1e-9)


def test_report_and_baselines_use_the_same_book(ran: Path) -> None:
    from trainers.atft_gat.heldout import HELDOUT

    out = ran / "out"
    report = json.loads((out / "booked" / REPORT_FILE).read_text())
    assert report["book"]["exit"] == 0.4 and report["book"]["halflife"] == 2.0
    chosen = next(t for t in report["trials"] if t["chosen"])
    trial_dir = out / "booked" / f"trial_{chosen['number']}"
    trained = HELDOUT.load(trial_dir)
    prediction = HELDOUT.predict(trial_dir, trained, out / "cache")
    want = _naive(prediction.frame)
    for name in ("sharpe", "sharpe_net", "turnover"):
        assert chosen["test"][name]["value"] == pytest.approx(want[name], rel=1e-9)
    baselines = HELDOUT.baselines(trained, prediction)
    for name in ("best_feature", "linear"):
        frame = baselines["frames"]["test"][name]
        want = _naive(frame)
        for metric in ("sharpe", "sharpe_net", "turnover"):
            assert baselines["test"][name][metric]["value"] == pytest.approx(want[metric],
                                                                             rel=1e-9)
            assert report["baselines"]["test"][name][metric]["value"] == pytest.approx(
                want[metric], rel=1e-9)


def test_portfolio_table_is_checked(tmp_path: Path) -> None:
    from trainers.errors import UserError

    base = STUDY + "\n[portfolio]\n"
    cases = {"exit = 0.1": "exit", "enter = 0.9": "enter", "holdings = 3": "portfolio.holdings",
             "score_halflife = -1": "score_halflife"}
    for line, key in cases.items():
        path = tmp_path / "held.toml"
        path.write_text(base + line + "\n")
        with pytest.raises(UserError, match=key):
            load_study_spec(str(path))
    clash = STUDY.replace("purge = 20", "purge = 20\nenter = 0.1") + "\n[portfolio]\nenter = 0.2\n"
    path.write_text(clash)
    with pytest.raises(UserError, match=r"also set in \[portfolio\]"):
        load_study_spec(str(path))


def test_selected_on_net_sharpe_deflates_it_and_reports_every_cost(ran: Path) -> None:
    from hpo.evaluate import summary_of
    from hpo.heldout import render_lines

    out = ran / "out"
    report = json.loads((out / "booked" / REPORT_FILE).read_text())
    study = optuna.load_study(study_name="booked", storage=f"sqlite:///{out / 'hpo.db'}")
    dsr = report["deflated_sharpe"]
    assert dsr["metric"] == "sharpe_net" and "net Sharpe (of 5 bps)" in dsr["of"]
    chosen = next(t for t in report["trials"] if t["chosen"])
    assert dsr["sharpe"] == chosen["validation"]["sharpe_net"]["value"]
    nets = [t.user_attrs["sharpe_net"] for t in study.trials if "sharpe_net" in t.user_attrs]
    assert dsr["sharpe_variance"] == pytest.approx(float(np.var(nets, ddof=1)))
    costs = report["costs"]["chosen"]["test"]
    assert costs["grid_bps"] == [5.0, 0.0, 20.0]
    test = chosen["test"]
    assert costs["sharpe_net"]["5"]["value"] == pytest.approx(test["sharpe_net"]["value"])
    assert costs["sharpe_net"]["0"]["value"] == pytest.approx(chosen["test"]["sharpe"]["value"])
    assert costs["sharpe_net"]["20"]["value"] < costs["sharpe_net"]["5"]["value"]
    # Break-even: the cost at which the mean net return is 0, from the plain loop.
    from trainers.atft_gat.heldout import HELDOUT

    trial_dir = out / "booked" / f"trial_{chosen['number']}"
    trained = HELDOUT.load(trial_dir)
    frame = HELDOUT.predict(trial_dir, trained, out / "cache").frame
    _, gross, turnover, _ = naive_books(frame["date"].to_numpy(), frame["code"].to_numpy(),
                                        frame["pred"].to_numpy(), frame["target"].to_numpy(),
                                        BOOK)
    even = max(0.0, 1e4 * sum(gross.values()) / sum(turnover.values()))
    assert costs["break_even_bps"] == pytest.approx(even, rel=1e-9)
    lines = "\n".join(render_lines(summary_of(report)))
    assert "net Sharpe on test at 5 / 0 / 20 bps per unit traded:" in lines
    assert "validation net Sharpe (of 5 bps)" in lines
    assert "ridge (every feature):" in lines


def test_a_file_panel_selects_on_net_sharpe_by_default(tmp_path: Path) -> None:
    """Without [[objectives]], a study on a file panel optimises sharpe_net; on the synthetic
    market sharpe; a listed objective is kept as written."""
    body = STUDY.split("[sampler]", 1)[1]
    head = 'name = "held"\nworkload = "atft_gat"\nn_trials = 3\n[sampler]'
    path = tmp_path / "held.toml"
    path.write_text(head + body)
    assert load_study_spec(str(path)).metric_names == ["sharpe", "rank_ic", "val_loss"]
    on_file = '[data]\nsource = "panel.parquet"\nexecution_lag = 0'
    path.write_text((head + body).replace("[data]", on_file))
    assert load_study_spec(str(path)).metric_names == ["sharpe_net", "rank_ic", "val_loss"]
    path.write_text(STUDY.replace("[data]", on_file))
    assert load_study_spec(str(path)).metric_names == ["sharpe", "val_loss"]


SEARCHED = """
[search_space.exit]
type = "categorical"
choices = [0.2, 0.45]
[search_space.score_halflife]
type = "categorical"
choices = [0.0, 4.0]
"""


def test_searched_book_settings_rescore_each_trial(tmp_path: Path) -> None:
    """Book settings searched like hyperparameters: each trial's objectives are recomputable
    from its predictions file and its own book, and the PBO reads each trial's returns with
    that trial's book."""
    from hpo.heldout.luck import validation_returns
    from trainers.atft_gat.heldout import HELDOUT
    from trainers.heldout import ranking_returns

    text = (STUDY.replace('name = "held"', 'name = "searched"').replace("n_trials = 3",
                                                                       "n_trials = 4")
            .replace('metric = "sharpe"', 'metric = "sharpe_net"') + SEARCHED)
    (tmp_path / "searched.toml").write_text(text)
    out = tmp_path / "out"
    assert api.run_study(str(tmp_path / "searched.toml"), output=str(out)) == 0
    study = optuna.load_study(study_name="searched", storage=f"sqlite:///{out / 'hpo.db'}")
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    books = set()
    for t in done:
        book = Book(exit=t.params["exit"], halflife=t.params["score_halflife"])
        books.add(book)
        assert t.user_attrs["book"] == book.to_json()
        frame = pl.read_parquet(out / "searched" / f"trial_{t.number}" / "predictions.parquet")
        _, _, _, net = naive_books(frame["date"].to_numpy(), frame["code"].to_numpy(),
                                   frame["pred"].to_numpy(), frame["target"].to_numpy(), book)
        assert t.values[0] == pytest.approx(_sharpe_of(net), rel=1e-9)
    assert len(books) >= 2  # the search tried more than one book
    first = done[0]
    trained = HELDOUT.load(out / "searched" / f"trial_{first.number}")
    matrix, columns, _ = validation_returns(study, HELDOUT, out,
                                            [t.number for t in done], trained)
    for j, n in enumerate(columns):
        t = study.trials[n]
        frame = pl.read_parquet(out / "searched" / f"trial_{n}" / "predictions.parquet")
        own = ranking_returns(frame, scoring=Scoring(book=Book(exit=t.params["exit"],
                                               halflife=t.params["score_halflife"])))
        np.testing.assert_allclose(matrix[:, j], own.sort("date")["ret"].to_numpy()[
            -len(matrix):], equal_nan=True)
