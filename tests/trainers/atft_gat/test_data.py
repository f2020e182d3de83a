"""The cache as a panel: per-value missing data, per-batch standardisation, the date split."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from cache import CacheSpec, load_or_build
from trainers.atft_gat.data import Panel, cache_panel, date_split, standardise
from trainers.atft_gat.synthetic import FEATURE_NAMES, TARGET_NAMES, generate_market
from trainers.errors import UserError
from trainers.metrics import panel_metrics


def _dense(frame: pl.DataFrame, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(D, S, len(names)) float64 with NaN for absent rows, and the (D, S) presence, by hand."""
    dates = np.unique(frame["date"].to_numpy())
    codes = sorted(frame["code"].unique().to_list())
    out = np.full((len(dates), len(codes), len(names)), np.nan)
    present = np.zeros((len(dates), len(codes)), dtype=bool)
    d = np.searchsorted(dates, frame["date"].to_numpy())
    s = np.searchsorted(np.array(codes), frame["code"].to_numpy())
    out[d, s] = frame.select(names).to_numpy()
    present[d, s] = True
    return out, present


def _panel(tmp_path: Path, frame: pl.DataFrame, features: tuple[str, ...] = FEATURE_NAMES,
           *, policy: str = "mask", **kwargs) -> tuple[Panel, object]:
    fc = load_or_build(frame, tmp_path / "cache", CacheSpec(
        feature_columns=features, target_columns=TARGET_NAMES, nan_policy=policy))
    return cache_panel(fc, **kwargs), fc


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    """10 % of rows missing (listing gaps), and 3 % of the f_own values NaN on present rows."""
    market = generate_market(n_stocks=30, n_dates=80, seed=1, missing_rate=0.1)
    rng = np.random.default_rng(0)
    hole = rng.random(market.height) < 0.03
    return market.with_columns(
        pl.when(pl.Series(hole)).then(None).otherwise(pl.col("f_own")).alias("f_own"))


def test_cache_panel_holds_every_value_and_drops_no_row(tmp_path: Path,
                                                        frame: pl.DataFrame) -> None:
    panel, fc = _panel(tmp_path, frame)
    x, present = _dense(frame, FEATURE_NAMES)
    y, _ = _dense(frame, TARGET_NAMES)
    assert panel.x.shape == x.shape and panel.x.dtype == torch.float32
    assert panel.y.shape == y.shape and panel.present.dtype == torch.bool
    assert panel.feature_names == FEATURE_NAMES and panel.target_names == TARGET_NAMES
    np.testing.assert_array_equal(panel.present.numpy(), present)
    np.testing.assert_array_equal(panel.x.numpy(), x.astype(np.float32))
    np.testing.assert_array_equal(panel.y.numpy(), y.astype(np.float32))
    # A NaN feature keeps its stock-day: presence is the row's existence, nothing else.
    f_own = FEATURE_NAMES.index("f_own")
    holes = present & np.isnan(x[..., f_own])
    assert holes.sum() > 20 and panel.present[torch.from_numpy(holes)].all()
    # The panel is the cache's mapped block, not a copy.
    assert panel.x.data_ptr() == fc.features_torch().data_ptr()


def test_missing_values_are_imputed_per_value_with_an_optional_indicator(
        tmp_path: Path, frame: pl.DataFrame) -> None:
    plain, fc = _panel(tmp_path, frame)
    flagged, _ = _panel(tmp_path, frame, missing_indicator=True)
    train = np.arange(0, 50)
    moments = fc.feature_moments(train)
    plain = standardise(plain, train, moments=moments)
    flagged = standardise(flagged, train, moments=moments)
    d, lookback = 60, 5
    x, idx = plain.window(d, lookback)
    xf, idx_f = flagged.window(d, lookback)
    n_feat = len(FEATURE_NAMES)
    assert torch.equal(idx, idx_f) and plain.n_inputs == n_feat and flagged.n_inputs == 2 * n_feat
    raw = plain.x[d - lookback + 1:d + 1].permute(1, 0, 2)[idx]  # (n, L, F) with NaN
    missing = torch.isnan(raw)
    assert missing.any()
    assert torch.equal(x[missing], torch.zeros(int(missing.sum())))  # the training mean
    expected = (raw - plain.feature_mean) / plain.feature_std
    assert torch.allclose(x[~missing], expected[~missing])
    assert torch.equal(xf[..., :n_feat], x) and torch.equal(xf[..., n_feat:], missing.float())


def test_targets_are_never_filled(tmp_path: Path) -> None:
    """Under "fill" a missing feature takes fill_value; a missing target stays NaN, so the
    loss and the metrics mask it instead of scoring a 0 % return."""
    market = generate_market(n_stocks=8, n_dates=40, seed=2)
    market = market.with_columns(
        pl.when(pl.col("code") == "S0003").then(None).otherwise(pl.col("ret_1d"))
        .alias("ret_1d"),
        pl.when(pl.col("code") == "S0004").then(None).otherwise(pl.col("f_own"))
        .alias("f_own"))
    panel, fc = _panel(tmp_path, market, policy="fill")
    assert torch.isnan(panel.y[:, 2, 0]).all()
    assert (panel.x[:, 3, FEATURE_NAMES.index("f_own")] == 0.0).all()
    assert fc.manifest["nan"]["bad_values"]["ret_1d"] == 40 + 7  # + the last date's
    assert fc.manifest["rows_with_target"]["ret_1d"] == 7 * 39


def test_window(tmp_path: Path, frame: pl.DataFrame) -> None:
    panel, _ = _panel(tmp_path, frame)
    d, lookback = 40, 7
    x, idx = panel.window(d, lookback)
    expected_idx = torch.nonzero(panel.present[d]).squeeze(1)
    assert torch.equal(idx, expected_idx) and idx.dtype == torch.int64
    assert x.shape == (len(idx), lookback, len(FEATURE_NAMES)) and x.is_contiguous()
    raw = torch.nan_to_num(panel.x, nan=0.0)  # a raw panel only imputes
    for row, stock in enumerate(idx.tolist()):
        assert torch.equal(x[row], raw[d - lookback + 1 : d + 1, stock])
    # A fresh tensor: writing to it leaves the panel alone.
    before = x.clone()
    x.add_(1.0)
    assert torch.equal(panel.window(d, lookback)[0], before)
    assert panel.window(lookback - 1, lookback)[0].shape[1] == lookback
    with pytest.raises(ValueError, match="start at date index >= lookback - 1"):
        panel.window(lookback - 2, lookback)
    with pytest.raises(IndexError):
        panel.window(80, 1)


def test_standardise_uses_training_dates_only(tmp_path: Path, frame: pl.DataFrame) -> None:
    panel, fc = _panel(tmp_path, frame)
    train = np.arange(5, 40)
    z = standardise(panel, train, moments=fc.feature_moments(train))
    values = panel.x[train][panel.present[train]].double().numpy()  # (n, F) with NaN
    mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
    np.testing.assert_allclose(z.feature_mean.numpy(), mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(z.feature_std.numpy(), std, rtol=1e-6)
    # The cache's per-date statistics and a pass over the panel agree.
    direct = standardise(panel, train)
    assert torch.allclose(direct.feature_mean, z.feature_mean, atol=1e-6)
    assert torch.allclose(direct.feature_std, z.feature_std, rtol=1e-6)
    assert panel.feature_mean is None and z.x is panel.x  # nothing copied or touched
    # No leakage: wild values on non-training dates do not move the statistics.
    wild = panel.x.clone()
    wild[45:] = 1e6
    z2 = standardise(Panel(**{**panel.__dict__, "x": wild}), train)
    assert torch.equal(z2.feature_mean, direct.feature_mean)
    assert torch.equal(z2.feature_std, direct.feature_std)


def test_standardise_constant_feature_is_centred_only_and_empty_is_refused(
        tmp_path: Path) -> None:
    frame = generate_market(n_stocks=5, n_dates=30, seed=3).with_columns(
        pl.lit(2.5, dtype=pl.Float32).alias("f_const"),
        pl.when(pl.col("date") < pl.col("date").unique().sort().gather(15).first())
        .then(None).otherwise(pl.col("f_own")).alias("f_late"))
    panel, fc = _panel(tmp_path, frame, ("f_own", "f_const"))
    z = standardise(panel, np.arange(10), moments=fc.feature_moments(np.arange(10)))
    assert z.feature_std[1] == 1.0 and (z.window(12, 3)[0][..., 1] == 0).all()
    with pytest.raises(ValueError, match="at least one training date"):
        standardise(panel, np.array([], dtype=np.int64))
    late, fc = _panel(tmp_path, frame, ("f_own", "f_late"))
    with pytest.raises(UserError, match="f_late have no value on any of the 10 training"):
        standardise(late, np.arange(10), moments=fc.feature_moments(np.arange(10)))


@pytest.mark.parametrize("n_dates", [120, 250, 1000])
@pytest.mark.parametrize("purge", [21, 25])
@pytest.mark.parametrize("lag", [0, 1])
@pytest.mark.parametrize("fractions", [(0.1, 0.0), (0.25, 0.2), (0.2, 0.3)])
def test_date_split_invariants(n_dates: int, purge: int, lag: int,
                               fractions: tuple[float, float]) -> None:
    val_fraction, test_fraction = fractions
    horizon = 20
    usable = n_dates - horizon - lag
    n_test = max(1, round(test_fraction * usable)) if test_fraction else 0
    n_train = usable - n_test - max(1, round(val_fraction * usable)) - purge * (
        2 if n_test else 1)
    if n_train < 1:  # too short for the settings: refused with the counts
        with pytest.raises(UserError, match="too few"):
            date_split(n_dates, val_fraction=val_fraction, test_fraction=test_fraction,
                       purge=purge, horizon=horizon, lag=lag)
        return
    s = date_split(n_dates, val_fraction=val_fraction, test_fraction=test_fraction,
                   purge=purge, horizon=horizon, lag=lag)
    assert len(s.train) == n_train
    assert s.train.dtype == s.val.dtype == s.test.dtype == np.int64
    for part in (s.train, s.val, s.test):
        assert len(part) == 0 or np.all(np.diff(part) == 1)
    assert s.train[0] == 0
    assert len(s.val) == max(1, round(val_fraction * usable))
    last_labelled = n_dates - 1 - horizon - lag
    if test_fraction:
        assert len(s.test) == max(1, round(test_fraction * usable))
        assert s.test[-1] == last_labelled
        assert s.test[0] - s.val[-1] - 1 == purge  # the second gap, exactly
        # No validation label (t + lag .. t + lag + horizon) reaches a test date.
        assert s.val[-1] + lag + horizon < s.test[0]
        assert s.read_until < s.test[0]
    else:
        assert len(s.test) == 0 and s.val[-1] == last_labelled
    assert s.val[0] - s.train[-1] - 1 == purge
    labels = s.train[:, None] + lag + np.arange(horizon + 1)[None, :]
    assert not np.isin(labels, s.val).any() and not np.isin(labels, s.test).any()
    assert s.read_until == s.val[-1] + lag


def test_date_split_does_not_depend_on_lookback_or_batch() -> None:
    """The boundaries take no trial setting: every trial of a study gets the same ones."""
    import inspect

    assert set(inspect.signature(date_split).parameters) == {
        "n_dates", "val_fraction", "test_fraction", "purge", "horizon", "lag", "val_start",
        "test_start"}


def test_split_dates_replace_the_fractions() -> None:
    n, purge, horizon = 200, 6, 5
    s = date_split(n, val_fraction=0.2, test_fraction=0.2, purge=purge, horizon=horizon,
                   lag=1, val_start=100, test_start=150)
    last = n - 1 - horizon - 1
    assert (s.test[0], s.test[-1]) == (150, last)
    assert (s.val[0], s.val[-1]) == (100, 150 - purge - 1)
    assert s.train[-1] == 100 - purge - 1
    only_test = date_split(n, val_fraction=0.1, test_fraction=0.4, purge=purge,
                           horizon=horizon, lag=1, test_start=150)
    assert only_test.test[0] == 150 and len(only_test.val) == round(0.1 * (last + 1))
    with pytest.raises(UserError, match="val_start is date 146 of 200, but validation must "
                                        "end at date 144"):
        date_split(n, val_fraction=0.2, test_fraction=0.2, purge=purge, horizon=horizon,
                   lag=1, val_start=145, test_start=150)
    with pytest.raises(UserError, match="test_start is date 196 of 200, after the last"):
        date_split(n, val_fraction=0.2, test_fraction=0.2, purge=purge, horizon=horizon,
                   lag=1, test_start=195)


def test_study_split_finds_the_first_date_on_or_after_each_start() -> None:
    from trainers.atft_gat.config import TrainConfig
    from trainers.atft_gat.data import study_split

    days = np.arange(np.datetime64("2020-01-01"), np.datetime64("2020-12-31"))
    days = days[np.is_busday(days)]
    config = TrainConfig(source="p.parquet", horizons=(1,), metric_horizon=1,
                         val_start="2020-07-04", test_start="2020-10-01")
    assert (config.execution_lag, config.purge) == (1, 2)  # a file panel's defaults
    s = study_split(config, days)
    assert str(days[s.val[0]]) == "2020-07-06"  # the 4th is a Saturday
    assert str(days[s.test[0]]) == "2020-10-01"
    with pytest.raises(UserError, match="val_start = '2019-07-04' is outside the panel's dates"):
        study_split(dataclasses.replace(config, val_start="2019-07-04"), days)
    with pytest.raises(UserError, match="must come before test_start"):
        TrainConfig(val_start="2020-10-02", test_start="2020-10-01")


def test_date_split_reports_every_problem_and_short_panels() -> None:
    with pytest.raises(UserError, match="val_fraction.*test_fraction.*execution_lag.*purge=5:"):
        date_split(100, val_fraction=1.5, test_fraction=-0.1, purge=5, horizon=20, lag=2)
    with pytest.raises(UserError, match="purge=20: must be >= .*20 \\+ 1"):
        date_split(100, val_fraction=0.2, test_fraction=0.2, purge=20, horizon=20, lag=1)
    with pytest.raises(UserError, match="too few.*0 training dates"):
        date_split(60, val_fraction=0.3, test_fraction=0.3, purge=20, horizon=20)


def test_future_feature_cannot_leak_across_the_split(tmp_path: Path) -> None:
    """A feature equal to the future 20-day return predicts validation labels perfectly, yet
    the training labels end before validation begins."""
    n_dates, horizon = 120, 20
    frame = generate_market(n_stocks=25, n_dates=n_dates, seed=4)
    frame = frame.with_columns(pl.col("ret_20d").alias("f_future"))
    panel, _ = _panel(tmp_path, frame, (*FEATURE_NAMES, "f_future"))
    split = date_split(n_dates, val_fraction=0.25, test_fraction=0.0, purge=horizon,
                       horizon=horizon)
    train, val = split.train[split.train >= 19], split.val
    h = panel.target_names.index("ret_20d")
    col = panel.feature_names.index("f_future")

    def rank_ic(dates: np.ndarray) -> float:
        x = panel.x[dates, :, col].numpy()  # (n, S)
        y = panel.y[dates, :, h].numpy()
        day = np.repeat(dates, x.shape[1])
        rank = np.argsort(np.argsort(x, axis=1), axis=1)  # per-date rank of the feature
        return panel_metrics(day, rank.reshape(-1).astype(float), y.reshape(-1))["rank_ic"]

    assert rank_ic(val) == pytest.approx(1.0)
    assert rank_ic(train) == pytest.approx(1.0)
    # Knowledge from training labels cannot reach validation labels: every training label is
    # realised (t + horizon) before the first validation date.
    assert train.max() + horizon < val.min()
    # And every validation label is inside the sample.
    assert np.isfinite(panel.y[val, :, h].numpy()).all()
