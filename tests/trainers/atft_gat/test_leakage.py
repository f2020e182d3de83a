"""The date split really is purged: a leaked future return cannot reach validation.

The leak: a per-stock feature equal to each stock's 20-day forward return at the last training
date. That label spans the 20 dates after training ends, so it is strongly related to the
returns in that window (what an unpurged 70/15/15 split would have validated on) and unrelated
to anything after it. On a market with no planted signal, the validation RankIC of the leak, and
of a model trained with it, must stay at noise level while the same leak scores high in the purge
window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from trainers.atft_gat.config import TrainConfig
from trainers.atft_gat.synthetic import generate_market
from trainers.atft_gat.train import train
from trainers.context import TrialContext
from trainers.metrics import panel_metrics


def test_leaked_future_return_does_not_reach_validation(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    market = generate_market(n_stocks=60, n_dates=200, seed=5, own_strength=0.0,
                             peer_strength=0.0)
    config = dict(n_stocks=60, n_dates=200, epochs=1, max_steps_per_epoch=2, hidden_size=16,
                  attn_heads=2, gat_heads=2, gat_layers=1, lookback=10, graph_window=20,
                  graph_k=4, batch_size=60, val_fraction=0.3, purge=20, execution_lag=0)
    # A first run (without the leak) tells where training ends.
    probe = TrialContext(tmp_path / "probe", cache_dir=tmp_path / "cache")
    source = tmp_path / "market.parquet"
    market.write_parquet(source)
    train(TrainConfig(source=str(source), **config), probe)
    split = probe.attrs["split"]
    assert split["purge_dates"] >= 20
    train_end = np.datetime64(split["fit"][1])
    val_start = np.datetime64(split["val"][0])

    leak = market.filter(pl.col("date") == train_end).select(
        "code", pl.col("ret_20d").alias("f_leak"))
    leaky = market.join(leak, on="code").sort("date", "code")
    dates = leaky["date"].to_numpy()
    window = (dates > train_end) & (dates < val_start)
    val = dates >= val_start
    rets = leaky["ret_1d"].to_numpy()
    in_window = panel_metrics(dates[window], leaky["f_leak"].to_numpy()[window], rets[window])
    in_val = panel_metrics(dates[val], leaky["f_leak"].to_numpy()[val], rets[val])
    print("window", in_window["rank_ic"], "val", in_val["rank_ic"])
    assert in_window["rank_ic"] > 0.1  # what an unpurged split would have rewarded
    assert abs(in_val["rank_ic"]) < 0.08  # noise level after the purge gap

    source2 = tmp_path / "leaky.parquet"
    leaky.write_parquet(source2)
    ctx = TrialContext(tmp_path / "leaky", cache_dir=tmp_path / "cache")
    metrics = train(TrainConfig(source=str(source2), **config), ctx)
    assert "f_leak" in ctx.attrs["data"]["features"]
    assert ctx.attrs["split"] == split
    print("model", metrics["rank_ic"])
    assert abs(metrics["rank_ic"]) < 0.08
