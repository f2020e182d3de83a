"""The ATFT-GAT recipe end to end on a tiny synthetic market: metrics, cache, every parameter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from scipy import stats

from trainers.atft_gat.config import TrainConfig
from trainers.atft_gat.train import train
from trainers.context import TrialContext

TINY = dict(n_stocks=24, n_dates=140, epochs=1, max_steps_per_epoch=3, hidden_size=16,
            attn_heads=2, gat_heads=2, gat_layers=1, lookback=10, batch_size=48, warmup_steps=0,
            graph_window=20, graph_k=4, val_fraction=0.25, purge=20, execution_lag=0)


def run(tmp_path: Path, name: str, **overrides) -> tuple[dict, TrialContext]:
    torch.set_num_threads(1)
    config = TrainConfig(**{**TINY, **overrides})
    ctx = TrialContext(tmp_path / name, seed=0, cache_dir=tmp_path / "cache")
    return train(config, ctx), ctx


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, TrialContext, Path]:
    root = tmp_path_factory.mktemp("atft")
    metrics, ctx = run(root, "base")
    return metrics, ctx, root


def test_metrics_equal_scipy_on_predictions(baseline) -> None:
    metrics, ctx, _ = baseline
    preds = pl.read_parquet(ctx.output_dir / "predictions.parquet")
    assert preds.columns == ["date", "code", "pred", "target"]
    rank_ics, ics = [], []
    for _, day in preds.group_by("date", maintain_order=True):
        if day.height >= 5:
            rank_ics.append(stats.spearmanr(day["pred"], day["target"]).statistic)
            ics.append(stats.pearsonr(day["pred"], day["target"]).statistic)
    assert metrics["rank_ic"] == pytest.approx(np.mean(rank_ics), abs=1e-9)
    assert metrics["ic"] == pytest.approx(np.mean(ics), abs=1e-9)
    hits = np.sign(preds["pred"].to_numpy()) == np.sign(preds["target"].to_numpy())
    nonzero = preds["target"].to_numpy() != 0
    assert metrics["hit_rate"] == pytest.approx(hits[nonzero].mean(), abs=1e-9)


def test_run_facts_are_recorded(baseline) -> None:
    _, ctx, _ = baseline
    assert ctx.attrs["optimizer_class"] == "AdamW"
    assert ctx.attrs["device"] == "cpu" and ctx.attrs["precision"] == "fp32"
    assert ctx.attrs["data"]["edges_per_date"] > 0
    assert [h["epoch"] for h in ctx.history] == [1]
    assert (ctx.output_dir / "checkpoint.pt").exists() and (ctx.output_dir / "model.pt").exists()


def test_training_reads_no_parquet_once_cached(tmp_path: Path, monkeypatch) -> None:
    from trainers.atft_gat.synthetic import generate_market

    source = tmp_path / "panel.parquet"
    generate_market(n_stocks=24, n_dates=140, seed=3).write_parquet(source)
    first, _ = run(tmp_path, "a", source=str(source))

    def refuse(*args, **kwargs):
        raise AssertionError("training read the parquet file although the cache exists")

    import pyarrow.parquet as pq

    for module, name in ((pl, "read_parquet"), (pl, "scan_parquet"), (pl, "read_csv"),
                         (pl, "scan_csv"), (pq, "read_table"), (pq, "ParquetFile")):
        monkeypatch.setattr(module, name, refuse)
    second, _ = run(tmp_path, "b", source=str(source))
    assert second["rank_ic"] == pytest.approx(first["rank_ic"], abs=1e-12)


def _final_weights(ctx: TrialContext) -> torch.Tensor:
    state = torch.load(ctx.output_dir / "model.pt", weights_only=False)["model"]
    return torch.cat([v.flatten().float() for v in state.values()])


# Every parameter of studies/production.toml, with a second value to try.
PRODUCTION_PARAMS = {
    "lr": 3e-3, "batch_size": 96, "hidden_size": 32, "lookback": 15, "dropout": 0.3,
    "gat_layers": 2, "gat_heads": 4, "gat_dropout": 0.4, "graph_k": 8, "fan_top_k": 1,
    "edge_dropout": 0.5,
    "optimizer": "adabelief", "weight_decay": 1e-2, "rank_weight": 1.0, "ic_weight": 0.5,
}


def test_every_production_parameter_is_covered() -> None:
    from hpo.config import load_study_spec

    names = {p.name for p in load_study_spec("production").search_space}
    assert names == set(PRODUCTION_PARAMS)


@pytest.mark.parametrize("name", sorted(PRODUCTION_PARAMS))
def test_each_parameter_changes_the_run(baseline, name: str) -> None:
    """Same seed, same data: changing one parameter changes the model or its trajectory."""
    base_metrics, base_ctx, root = baseline
    metrics, ctx = run(root, f"p_{name}", **{name: PRODUCTION_PARAMS[name]})
    a, b = _final_weights(base_ctx), _final_weights(ctx)
    changed = a.shape != b.shape or not torch.equal(a, b)
    assert changed, f"{name} did not change the trained model"
    assert metrics["val_loss"] != base_metrics["val_loss"]
    if name == "optimizer":
        assert ctx.attrs["optimizer_class"] == "AdaBelief"


def test_same_config_same_model(baseline) -> None:
    """The control for the test above: with nothing changed, the run is reproduced exactly."""
    base_metrics, base_ctx, root = baseline
    metrics, ctx = run(root, "again")
    assert torch.equal(_final_weights(base_ctx), _final_weights(ctx))
    assert metrics == base_metrics


def test_study_lr_applies_in_every_phase(tmp_path: Path) -> None:
    """The public project's phase trainer overwrote the sampled learning rate; ours must not."""
    phases = dict(phases=("baseline:1", "graph:1", "finetune:1"), epochs=3,
                  finetune_lr_scale=0.1, scheduler="constant")
    _, slow = run(tmp_path, "slow", lr=1e-3, **phases)
    _, fast = run(tmp_path, "fast", lr=2e-3, **phases)
    assert [h["phase"] for h in slow.history] == ["baseline", "graph", "finetune"]
    for a, b in zip(slow.history, fast.history, strict=True):
        assert b["lr"] == pytest.approx(2 * a["lr"], rel=1e-9)
    assert slow.history[0]["lr"] == pytest.approx(1e-3)
    assert slow.history[2]["lr"] == pytest.approx(1e-4)


def test_baseline_phase_really_runs_without_the_graph(tmp_path: Path) -> None:
    # graph_k changes the graph; in a baseline-only run it must change nothing
    _, a = run(tmp_path, "b4", phases=("baseline:1",), graph_k=4)
    _, b = run(tmp_path, "b8", phases=("baseline:1",), graph_k=8)
    assert torch.equal(_final_weights(a), _final_weights(b))
    _, c = run(tmp_path, "g4", phases=("graph:1",), graph_k=4)
    _, d = run(tmp_path, "g8", phases=("graph:1",), graph_k=8)
    assert not torch.equal(_final_weights(c), _final_weights(d))


def test_prefetched_batches_are_the_same_batches(tmp_path: Path) -> None:
    """GPU hosts build the next batch in a thread; it must not change what is trained on."""
    from trainers.atft_gat import train as recipe

    config = TrainConfig(**TINY)
    fc = recipe.load_features(config, tmp_path / "cache")
    panel = recipe.cache_panel(fc)
    graphs = recipe.load_graphs(fc, panel, config)
    y_z = recipe.zscore_targets(panel.y)
    order = np.random.default_rng(0).permutation(np.arange(config.lookback, 100))
    kwargs = dict(dates_per_step=3, steps=7, lookback=config.lookback, with_graph=True)
    plain = [b for b, _ in recipe.epoch_batches(panel, y_z, graphs, order, prefetch=False,
                                                 **kwargs)]
    ahead = [b for b, _ in recipe.epoch_batches(panel, y_z, graphs, order, prefetch=True,
                                                 **kwargs)]
    assert len(plain) == len(ahead) == 7
    for a, b in zip(plain, ahead, strict=True):
        assert np.array_equal(a.date, b.date)
        assert torch.equal(a.x, b.x) and torch.equal(a.edges, b.edges)
        assert torch.equal(torch.nan_to_num(a.y), torch.nan_to_num(b.y))


def test_selection_dates_pick_the_epoch_and_stay_purged(tmp_path: Path) -> None:
    """With select_fraction the best epoch is chosen on a purged slice of the training period,
    never on the validation dates that score the trial, and its weights are what is scored."""
    metrics, ctx = run(tmp_path, "sel", epochs=3, select_fraction=0.25, n_dates=200)
    split = ctx.attrs["split"]
    fit_end, sel_start = np.datetime64(split["fit"][1]), np.datetime64(split["select"][0])
    assert np.busday_count(fit_end, sel_start) > 20  # purge gap between fit and selection
    assert np.datetime64(split["select"][1]) < np.datetime64(split["val"][0])
    selected = ctx.attrs["selected_epoch"]
    sel_ics = [h["select_rank_ic"] for h in ctx.history]
    assert selected == 1 + int(np.argmax(sel_ics))
    # the scored metrics are those of the selected epoch's weights
    assert metrics["rank_ic"] == pytest.approx(ctx.history[selected - 1]["rank_ic"], abs=1e-12)


class StopAfter(TrialContext):
    """Asks the trainer to stop once ``epochs`` epochs are reported (like a SIGTERM)."""

    def __init__(self, *args, epochs: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stop_at = epochs

    def report(self, epoch: int, metrics: dict[str, float], **kw):  # noqa: ANN003, ANN201
        report = super().report(epoch, metrics, **kw)
        if epoch == self.stop_at:
            self.request_stop("SIGTERM")
        return report


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    from trainers.errors import StopRequested

    settings = {**TINY, "epochs": 3, "select_fraction": 0.25, "n_dates": 200}
    whole = train(TrainConfig(**settings), TrialContext(tmp_path / "whole", seed=0,
                                                         cache_dir=tmp_path / "cache"))
    first = StopAfter(tmp_path / "cut", seed=0, cache_dir=tmp_path / "cache", epochs=2)
    with pytest.raises(StopRequested):
        train(TrainConfig(**settings), first)
    resumed = TrialContext(tmp_path / "cut", seed=0, cache_dir=tmp_path / "cache")
    again = train(TrainConfig(**settings), resumed)
    assert again == whole
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]


def test_turnover_and_net_sharpe_recompute_from_the_predictions(baseline) -> None:
    from tests.trainers.test_turnover import naive_turnover_and_net

    metrics, ctx, _ = baseline
    preds = pl.read_parquet(ctx.output_dir / "predictions.parquet")
    turnover, sharpe_net = naive_turnover_and_net(
        preds["date"].to_numpy(), preds["code"].to_numpy(), preds["pred"].to_numpy(),
        preds["target"].to_numpy(), cost_bps=5.0)
    assert metrics["turnover"] == pytest.approx(turnover, rel=1e-12)
    assert metrics["sharpe_net"] == pytest.approx(sharpe_net, rel=1e-9)


def test_cost_bps_changes_only_the_net_figures(baseline) -> None:
    base_metrics, _, root = baseline
    metrics, _ = run(root, "costly", cost_bps=50.0)
    assert metrics["sharpe"] == base_metrics["sharpe"]
    assert metrics["turnover"] == base_metrics["turnover"]
    assert metrics["sharpe_net"] < base_metrics["sharpe_net"]
