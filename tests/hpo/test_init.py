"""``python -m hpo.init``: every problem of a panel at once, and a study file that runs on a
good one."""

from __future__ import annotations

import tomllib
from pathlib import Path

import polars as pl
import pytest

from hpo import api
from hpo.config import load_study_spec
from hpo.init import main
from trainers.atft_gat.synthetic import generate_market


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("init")
    generate_market(n_stocks=24, n_dates=260, seed=0, difficulty="realistic").write_parquet(
        root / "panel.parquet")
    return root / "panel.parquet"


def test_every_problem_is_reported_at_once_and_nothing_written(
        market: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    frame = pl.read_parquet(market)
    bad = (frame.rename({"code": "ticker"}).drop([c for c in frame.columns
                                                  if c.startswith("ret_")])
           .with_columns(pl.lit("x").alias("sector")))
    bad = pl.concat([bad, bad.head(3)])
    bad.write_parquet(tmp_path / "bad.parquet")
    out = tmp_path / "mine.toml"
    assert main(["--panel", str(tmp_path / "bad.parquet"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: panel ")
    assert "ticker" not in err  # a stock column by another name is mapped, not a problem
    assert "no target column ret_<h>d" in err
    assert "non-numeric feature column(s) sector" in err
    assert "3 duplicated (date, code) row(s)" in err  # found through the mapped ticker
    assert "3 problem(s)" in err and not out.exists()
    nameless = frame.drop("code")
    nameless.write_parquet(tmp_path / "nameless.parquet")
    assert main(["--panel", str(tmp_path / "nameless.parquet"), "--out", str(out)]) == 2
    assert "no 'code' column (add one, or name yours in the study file's [data] code_column)" \
        in capsys.readouterr().err
    # duplicates (date, code) are named when the key columns are there
    dup = pl.concat([frame, frame.head(2)])
    dup.write_parquet(tmp_path / "dup.parquet")
    assert main(["--panel", str(tmp_path / "dup.parquet"), "--out", str(out)]) == 2
    assert "2 duplicated (date, code) row(s)" in capsys.readouterr().err


def test_a_good_panel_gets_a_study_file_that_runs(market: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "studies" / "mine.toml"
    assert main(["--panel", str(market), "--out", str(out)]) == 0
    assert f"python -m hpo.run --study {out}" in capsys.readouterr().out
    raw = tomllib.loads(out.read_text())
    assert raw["data"]["horizons"] == [1, 5, 10, 20] and raw["data"]["metric_horizon"] == 1
    assert raw["data"]["graph_source"] == "f_ret_1d_past"
    assert raw["data"]["execution_lag"] == 1 and raw["data"]["purge"] == 21
    assert raw["objectives"][0]["metric"] == "sharpe_net"
    assert raw["trainer"]["max_steps_per_epoch"] > 0
    spec = load_study_spec(str(out))
    assert spec.metric_names == ["sharpe_net", "rank_ic"]
    assert main(["--panel", str(market), "--out", str(out)]) == 2  # never overwritten
    assert "pass --force" in capsys.readouterr().err
    assert api.run_study(str(out), output=str(tmp_path / "out"), n_trials=1, quiet=True) == 0


def test_a_panel_with_its_own_key_names_gets_them_in_the_study_file(
        market: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``trade_date`` and ``ticker`` are written as ``[data] date_column / code_column``, and the
    study trains on the panel as it is: the same trial figures as the panel renamed."""
    own = tmp_path / "own.parquet"
    pl.read_parquet(market).rename({"date": "trade_date", "code": "ticker"}).write_parquet(own)
    out = tmp_path / "own.toml"
    assert main(["--panel", str(own), "--out", str(out)]) == 0
    raw = tomllib.loads(out.read_text())
    assert raw["data"]["date_column"] == "trade_date"
    assert raw["data"]["code_column"] == "ticker"
    assert raw["data"]["graph_source"] == "f_ret_1d_past"
    plain = tmp_path / "plain" / "own.toml"  # the same study name: the same trial seeds
    assert main(["--panel", str(market), "--out", str(plain)]) == 0
    assert "date_column" not in tomllib.loads(plain.read_text())["data"]
    values = []
    for i, study in enumerate((out, plain)):
        assert api.run_study(study, output=tmp_path / f"out{i}", n_trials=1, quiet=True) == 0
        trial = api.load_study("own", output=tmp_path / f"out{i}").trials[0]
        values.append(trial.values)
    assert all(values)
    assert values[0] == values[1]
