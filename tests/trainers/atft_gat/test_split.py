"""The held-out test period: no trial reads it, and every trial is scored on the same dates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import trainers.atft_gat.inputs as inputs_module
import trainers.atft_gat.train as train_module
from trainers.atft_gat.config import TrainConfig
from trainers.atft_gat.data import date_split
from trainers.atft_gat.synthetic import generate_market
from trainers.atft_gat.train import train
from trainers.context import TrialContext

SMALL = dict(epochs=2, max_steps_per_epoch=3, hidden_size=16, attn_heads=2, gat_heads=2,
             gat_layers=1, lookback=10, batch_size=48, warmup_steps=0, graph_window=20,
             graph_k=4, val_fraction=0.2, test_fraction=0.2, purge=20, select_fraction=0.2,
             execution_lag=0)
N_STOCKS, N_DATES = 24, 220


def _run(tmp_path: Path, name: str, source: Path, **overrides) -> tuple[dict, TrialContext]:
    torch.set_num_threads(1)
    config = TrainConfig(source=str(source), **{**SMALL, **overrides})
    ctx = TrialContext(tmp_path / name, seed=3, cache_dir=tmp_path / "cache")
    return train(config, ctx), ctx


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, Path]:
    root = tmp_path_factory.mktemp("split")
    frame = generate_market(n_stocks=N_STOCKS, n_dates=N_DATES, seed=2)
    path = root / "market.parquet"
    frame.write_parquet(path)
    return frame, path


def _test_start(frame: pl.DataFrame) -> np.datetime64:
    dates = np.unique(frame["date"].to_numpy()).astype("datetime64[D]")
    split = date_split(len(dates), val_fraction=0.2, test_fraction=0.2, purge=20, horizon=20)
    return dates[split.test[0]]


def test_poisoned_test_period_changes_nothing(tmp_path: Path, market) -> None:
    """Everything from the first test date on is replaced by wild values; the trial (its
    metrics, predictions, selected epoch and saved weights) is bit-identical, so nothing of the
    test period reaches training, early stopping, epoch selection or the scores."""
    frame, clean_path = market
    start = _test_start(frame)
    numeric = [c for c in frame.columns if c not in ("date", "code")]
    rng = np.random.default_rng(0)
    poisoned = frame.with_columns(
        pl.when(pl.col("date") >= start).then(pl.lit(rng.normal() * 1e6)).otherwise(pl.col(c))
        .alias(c) for c in numeric)
    assert not poisoned.filter(pl.col("date") >= start).equals(
        frame.filter(pl.col("date") >= start))
    poisoned_path = tmp_path / "poisoned.parquet"
    poisoned.write_parquet(poisoned_path)

    clean, ctx_a = _run(tmp_path, "clean", clean_path)
    dirty, ctx_b = _run(tmp_path, "dirty", poisoned_path)
    assert clean == dirty
    assert ctx_a.attrs["selected_epoch"] == ctx_b.attrs["selected_epoch"]
    preds_a = pl.read_parquet(ctx_a.output_dir / "predictions.parquet")
    assert preds_a.equals(pl.read_parquet(ctx_b.output_dir / "predictions.parquet"))
    assert preds_a["date"].max() < start
    weights_a = torch.load(ctx_a.output_dir / "model.pt")["model"]
    weights_b = torch.load(ctx_b.output_dir / "model.pt")["model"]
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    split = ctx_a.attrs["split"]
    assert np.datetime64(split["test"][0]) == start
    assert np.datetime64(split["val"][1]) < start


def test_every_date_the_trainer_touches_is_before_the_test_period(
        tmp_path: Path, market, monkeypatch: pytest.MonkeyPatch) -> None:
    """Record the panel each stage receives and the dates every batch reads."""
    frame, path = market
    start = _test_start(frame)
    seen: dict[str, list[np.datetime64]] = {"panel": [], "batch": [], "graph": []}
    make_batch, load_graphs = train_module.make_batch, inputs_module.load_graphs

    def recording_batch(panel, y_z, graphs, dates, *, lookback, with_graph):
        seen["panel"].append(panel.dates[-1])
        # A window reads dates [d - lookback + 1, d]; the label row of d is d itself.
        seen["batch"].extend(panel.dates[np.asarray(dates)])
        assert y_z.shape[0] == len(panel.dates)
        return make_batch(panel, y_z, graphs, dates, lookback=lookback, with_graph=with_graph)

    def recording_graphs(fc, panel, config, ctx=None):
        seen["graph"].append(panel.dates[-1])
        return load_graphs(fc, panel, config, ctx)

    monkeypatch.setattr(train_module, "make_batch", recording_batch)
    monkeypatch.setattr(inputs_module, "load_graphs", recording_graphs)
    _, ctx = _run(tmp_path, "rec", path)
    assert seen["batch"] and seen["graph"]
    split = ctx.attrs["split"]
    purge_end = np.datetime64(split["val"][1])
    for name, dates in seen.items():
        assert max(dates) <= purge_end, name
        assert max(dates) < start, name
    # The purge really separates them: 20 panel dates between the last read and the test.
    all_dates = np.unique(frame["date"].to_numpy()).astype("datetime64[D]")
    last_read = int(np.searchsorted(all_dates, max(seen["panel"])))
    assert int(np.searchsorted(all_dates, start)) - last_read - 1 == 20


def test_trials_with_other_lookbacks_share_the_validation_window(tmp_path: Path,
                                                                 market) -> None:
    _, path = market
    windows = []
    for lookback in (8, 10, 20):
        _, ctx = _run(tmp_path, f"lb{lookback}", path, lookback=lookback, epochs=1,
                      select_fraction=0.0)
        split = ctx.attrs["split"]
        preds = pl.read_parquet(ctx.output_dir / "predictions.parquet")
        windows.append((split["val"], split["test"], preds["date"].unique().sort().to_list()))
    assert windows[0] == windows[1] == windows[2]


def test_execution_lag_scores_the_next_dates_return(tmp_path: Path, market) -> None:
    """With lag 1 the label of date t is the return from t + 1; predictions.parquet's target
    column says so, date by date."""
    frame, path = market
    _, ctx = _run(tmp_path, "lag", path, execution_lag=1, purge=21, epochs=1,
                  select_fraction=0.0)
    preds = pl.read_parquet(ctx.output_dir / "predictions.parquet")
    dates = np.unique(frame["date"].to_numpy()).astype("datetime64[D]")
    nxt = {str(d): str(n) for d, n in zip(dates[:-1], dates[1:], strict=True)}
    joined = preds.with_columns(pl.col("date").cast(pl.String).replace_strict(nxt).alias("next"))
    joined = joined.join(frame.select(pl.col("date").cast(pl.String).alias("next"), "code",
                                      "ret_1d"), on=["next", "code"])
    assert joined.height == preds.height > 0
    assert np.allclose(joined["target"].to_numpy(), joined["ret_1d"].to_numpy(), atol=1e-7)


def test_the_split_rules_have_one_home_for_the_config_and_the_split() -> None:
    """A bad split setting is refused in the same words by the config and by date_split."""
    from trainers.atft_gat.config import TrainConfig
    from trainers.atft_gat.folds import split_problems
    from trainers.errors import UserError

    bad = {"val_fraction": 0.5, "test_fraction": 0.45, "purge": 3, "execution_lag": 1}
    rules = split_problems(val_fraction=0.5, test_fraction=0.45, horizon=20, lag=1, purge=3)
    assert [name for name, _, _ in rules] == ["test_fraction", "purge"]
    with pytest.raises(UserError) as from_config:
        TrainConfig(**bad)
    with pytest.raises(UserError) as from_split:
        date_split(300, val_fraction=0.5, test_fraction=0.45, purge=3, horizon=20, lag=1)
    for _, _, rule in rules:
        assert rule in str(from_config.value) and rule in str(from_split.value)
