"""Prediction from a saved trial: the training pipeline, carried on into the test period."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from trainers.atft_gat.config import TrainConfig
from trainers.atft_gat.data import cache_panel, standardise, study_split
from trainers.atft_gat.predict import load_trained, model_digest, predict_period
from trainers.atft_gat.synthetic import generate_market
from trainers.atft_gat.train import load_features, train
from trainers.context import TrialContext
from trainers.errors import UserError

SMALL = dict(epochs=2, max_steps_per_epoch=3, hidden_size=16, attn_heads=2, gat_heads=2,
             gat_layers=1, lookback=10, batch_size=48, warmup_steps=0, graph_window=20,
             graph_k=4, val_fraction=0.2, test_fraction=0.2, purge=20, execution_lag=0)
N_STOCKS, N_DATES = 24, 220


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, Path]:
    root = tmp_path_factory.mktemp("predict")
    frame = generate_market(n_stocks=N_STOCKS, n_dates=N_DATES, seed=4, difficulty="easy")
    path = root / "market.parquet"
    frame.write_parquet(path)
    return frame, path


def _train(root: Path, source: Path, **overrides) -> tuple[TrainConfig, TrialContext]:
    torch.set_num_threads(1)
    config = TrainConfig(source=str(source), **{**SMALL, **overrides})
    ctx = TrialContext(root / "trial", seed=1, cache_dir=root / "cache")
    train(config, ctx)
    return config, ctx


@pytest.mark.parametrize("overrides", [
    {"select_fraction": 0.2},  # the selected epoch's weights, with the graph
    {"phases": ["graph:1", "baseline:1"], "execution_lag": 1, "purge": 21},  # no graph, lag 1
], ids=["graph-selected", "baseline-lag1"])
def test_validation_predictions_reproduce_the_trials_file(tmp_path: Path, market,
                                                          overrides: dict) -> None:
    """Predicting the validation dates from model.pt gives the trial's predictions.parquet:
    the same cache, scaling, graphs, weights and targets, so the test period is predicted by
    the very model and pipeline the study scored."""
    _, path = market
    _, ctx = _train(tmp_path, path, **overrides)
    saved = pl.read_parquet(ctx.output_dir / "predictions.parquet")
    again, split, _ = predict_period(ctx.output_dir, cache_dir=tmp_path / "cache", period="val")
    assert again.select("date", "code", "target").equals(saved.select("date", "code", "target"))
    np.testing.assert_allclose(again["pred"].to_numpy(), saved["pred"].to_numpy(), rtol=0,
                               atol=1e-6)
    assert load_trained(ctx.output_dir).with_graph == ("phases" not in overrides)


def test_saved_feature_statistics_are_the_training_ones(tmp_path: Path, market) -> None:
    _, path = market
    config, ctx = _train(tmp_path, path, epochs=1)
    saved = torch.load(ctx.output_dir / "model.pt", weights_only=False)
    fc = load_features(config, tmp_path / "cache")
    panel = cache_panel(fc)
    split = study_split(config, panel.dates)
    train_dates = split.train[split.train >= config.lookback - 1]
    # Recomputed from the panel's values, not from the cache's per-date statistics.
    expected = standardise(panel, train_dates)
    torch.testing.assert_close(saved["feature_mean"], expected.feature_mean, rtol=1e-6,
                               atol=1e-6)
    torch.testing.assert_close(saved["feature_std"], expected.feature_std, rtol=1e-6, atol=1e-6)
    assert saved["feature_names"] == list(panel.feature_names)


def test_test_period_predictions(tmp_path: Path, market) -> None:
    """Every test date is predicted, targets are the market's own returns of those dates, and
    the model file's digest identifies the weights."""
    frame, path = market
    _, ctx = _train(tmp_path, path, epochs=1)
    preds, split, dates = predict_period(ctx.output_dir, cache_dir=tmp_path / "cache")
    test_dates = dates[split.test]
    assert np.array_equal(np.unique(preds["date"].to_numpy()).astype("datetime64[D]"),
                          test_dates)
    assert preds.height == len(test_dates) * N_STOCKS
    assert np.isfinite(preds["pred"].to_numpy()).all()
    joined = preds.join(frame.select("date", "code", "ret_1d"), on=["date", "code"])
    assert joined.height == preds.height
    np.testing.assert_allclose(joined["target"], joined["ret_1d"], atol=1e-7)
    assert predict_period(ctx.output_dir, cache_dir=tmp_path / "cache")[0].equals(preds)
    digest = model_digest(ctx.output_dir)
    assert len(digest) == 64 and digest == model_digest(ctx.output_dir)


def test_missing_model_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no model.pt in"):
        load_trained(tmp_path)


def test_a_user_panel_gets_the_best_feature_and_ridge_baselines(tmp_path: Path, market) -> None:
    """On a file panel (no oracle) the held-out capability fits both baselines on the
    training dates; the best feature and its test RankIC are scipy's on the panel itself."""
    from scipy import stats

    from trainers.atft_gat.heldout import HELDOUT

    frame, path = market
    _, ctx = _train(tmp_path, path, epochs=1, execution_lag=1, purge=21)
    trained = HELDOUT.load(ctx.output_dir)
    prediction = HELDOUT.predict(ctx.output_dir, trained, tmp_path / "cache")
    base = HELDOUT.baselines(trained, prediction)
    assert set(base["test"]) == {"best_feature", "linear"}  # a user panel has no oracle
    split = prediction.context["split"]
    days = np.sort(frame["date"].unique().to_numpy()).astype("datetime64[D]")
    # Lag 1: the label of date t is the return that starts on t + 1.
    lagged = frame.sort("date").with_columns(pl.col("ret_1d").shift(-1).over("code"))

    def mean_ic(feature: str, idx: np.ndarray) -> float:
        chosen = lagged.filter(pl.col("date").is_in(days[idx].tolist()))
        ics = [stats.spearmanr(day[feature], day["ret_1d"]).statistic
               for _, day in chosen.group_by("date") if day["ret_1d"].is_finite().sum() > 2]
        return float(np.nanmean(ics))

    train_ics = {name: mean_ic(name, split.train) for name in trained.feature_names}
    name = max(train_ics, key=lambda k: abs(train_ics[k]))
    sign = "+" if train_ics[name] > 0 else "-"
    best = base["test"]["best_feature"]
    assert best["feature"] == f"{sign}{name}"
    assert best["selection_rank_ic"] == pytest.approx(train_ics[name], abs=1e-9)
    expected = (1 if sign == "+" else -1) * mean_ic(name, split.test)
    assert best["rank_ic"]["value"] == pytest.approx(expected, abs=1e-9)
    assert base["test"]["linear"]["rank_ic"]["se"] > 0
