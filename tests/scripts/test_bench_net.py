"""bench_net: its real-data-like panel uses past returns only, and a tiny run's figures are the
report's and the plain book's recomputed on the chosen trial's test rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from scripts import bench_net
from trainers.metrics import Scoring, panel_metrics


def test_the_real_like_panel_has_past_only_features(tmp_path: Path) -> None:
    path = tmp_path / "panel.parquet"
    bench_net.real_like_panel(path, n_stocks=12, n_dates=80, seed=3)
    frame = pl.read_parquet(path).sort(["code", "date"])
    one = frame.filter(pl.col("code") == "S0003")
    r = one["f_ret_1d_past"].to_numpy()
    # a k-day past return is the sum of the last k daily (log) returns, today's included
    np.testing.assert_allclose(one["f_ret_5d_past"].to_numpy()[4:],
                               np.convolve(r, np.ones(5), "valid"), atol=1e-12)
    # the label of date t is the return of t + 1: tomorrow's row, never today's
    np.testing.assert_allclose(one["ret_1d"].to_numpy()[:-1], np.expm1(r[1:]), atol=1e-12)
    assert np.isnan(one["ret_1d"].to_numpy()[-1])
    assert frame.filter(pl.col("date") == frame["date"].min()).height == 12


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bench_net")
    args = ["--market-seeds", "0", "--real-like-seeds", "0", "--n-trials", "2", "--n-stocks",
            "30", "--n-dates", "380", "--steps", "3", "--batch-size", "120",
            "--workdir", str(root / "studies"), "--out", str(root)]
    assert bench_net.main(args) == 0
    return {"report": json.loads((root / "net.json").read_text()), "dir": root / "studies"}


def test_each_panel_reports_the_chosen_book_beside_the_plain_one(bench: dict[str, Any]) -> None:
    report = bench["report"]
    assert [p["panel"] for p in report["panels"]] == ["synthetic 0", "real_like 0"]
    for panel in report["panels"]:
        out = bench["dir"] / panel["panel"].replace(" ", "_") / "out" / "net"
        test = json.loads((out / "test_report.json").read_text())
        chosen = next(t for t in test["trials"] if t["chosen"])
        assert panel["rows"]["chosen"]["sharpe_net"]["value"] == \
            chosen["test"]["sharpe_net"]["value"]
        rows = pl.read_parquet(out / "test_predictions.parquet").filter(
            pl.col("trial") == chosen["number"])
        plain = panel_metrics(rows["date"].to_numpy(), rows["pred"].to_numpy(),
                              rows["target"].to_numpy(), codes=rows["code"].to_numpy(),
                              scoring=Scoring(periods_per_year=test["periods_per_year"]))
        assert panel["chosen_plain_book"]["turnover"] == pytest.approx(plain["turnover"])
        assert panel["book"] == {k: test["book"][k] for k in ("enter", "exit", "halflife")}
    synthetic = report["panels"][0]
    assert synthetic["turnover_over_oracle"] == pytest.approx(
        synthetic["rows"]["chosen"]["turnover"]["value"]
        / synthetic["rows"]["oracle"]["turnover"]["value"])
    assert report["panels"][1]["turnover_over_oracle"] is None  # no oracle for a file panel
    targets = report["targets"]
    assert set(targets) == {"turnover_at_most_1.2x_oracle", "net_sharpe_beats_ridge_on_4_of_5",
                            "pooled_better_than_ridge_by_2se",
                            "gross_lost_to_book_at_most_25pct"}
    ridge = report["pooled"]["linear"]
    assert ridge["panels"] == 2 and targets["pooled_better_than_ridge_by_2se"]["met"] == (
        ridge["mean"] > 2 * ridge["se"])
