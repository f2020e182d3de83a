"""Dense panel, standardisation and the purged date split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from trainers.atft_gat.data import Panel, date_split, dense_panel, standardise
from trainers.atft_gat.synthetic import FEATURE_NAMES, TARGET_NAMES, generate_market
from trainers.errors import UserError
from trainers.metrics import panel_metrics


@dataclass
class FakeCache:
    """The attributes of ``cache.FeatureCache`` that ``dense_panel`` reads."""

    features: np.ndarray
    targets: np.ndarray
    valid: np.ndarray | None
    feature_valid: np.ndarray | None
    target_valid: np.ndarray | None
    date_index: np.ndarray
    code_index: np.ndarray
    unique_dates: np.ndarray
    codes: list[str]
    date_offsets: np.ndarray
    feature_names: tuple[str, ...]
    target_names: tuple[str, ...]


def _cache(
    frame: pl.DataFrame,
    features: tuple[str, ...] = FEATURE_NAMES,
    targets: tuple[str, ...] = TARGET_NAMES,
    *,
    mask: bool = True,
) -> FakeCache:
    """Rows sorted by (date, code); under ``mask`` bad values read 0, and the row, feature and
    target validity masks are set as the cache's nan_policy="mask" does."""
    frame = frame.sort(["date", "code"])
    dates = frame["date"].to_numpy().astype("datetime64[D]")
    unique_dates = np.unique(dates)
    codes = sorted(frame["code"].unique().to_list())
    x = frame.select(features).to_numpy().astype(np.float32)
    y = frame.select(targets).to_numpy().astype(np.float32)
    valid = feature_valid = target_valid = None
    if mask:
        feature_valid, target_valid = np.isfinite(x).all(1), np.isfinite(y)
        valid = feature_valid & target_valid.all(1)
        x, y = np.nan_to_num(x, nan=0.0), np.nan_to_num(y, nan=0.0)
    date_index = np.searchsorted(unique_dates, dates).astype(np.int32)
    return FakeCache(
        features=x,
        targets=y,
        valid=valid,
        feature_valid=feature_valid,
        target_valid=target_valid,
        date_index=date_index,
        code_index=np.searchsorted(np.array(codes), frame["code"].to_numpy()).astype(np.int32),
        unique_dates=unique_dates,
        codes=codes,
        date_offsets=np.concatenate([[0], np.cumsum(np.bincount(date_index))]).astype(np.int64),
        feature_names=features,
        target_names=targets,
    )


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    return generate_market(n_stocks=30, n_dates=80, seed=1, missing_rate=0.1)


def test_dense_panel_places_every_row(frame: pl.DataFrame) -> None:
    fc = _cache(frame)
    panel = dense_panel(fc)
    assert panel.x.shape == (80, 30, len(FEATURE_NAMES)) and panel.x.dtype == torch.float32
    assert panel.y.shape == (80, 30, len(TARGET_NAMES))
    assert panel.present.shape == (80, 30) and panel.present.dtype == torch.bool
    assert panel.feature_names == FEATURE_NAMES and panel.target_names == TARGET_NAMES
    assert panel.codes == fc.codes and np.array_equal(panel.dates, fc.unique_dates)

    rows = np.flatnonzero(fc.feature_valid)
    d, s = fc.date_index[rows], fc.code_index[rows]
    np.testing.assert_array_equal(panel.x[d, s].numpy(), fc.features[rows])
    expected_y = np.where(fc.target_valid[rows], fc.targets[rows], np.nan)
    np.testing.assert_array_equal(panel.y[d, s].numpy(), expected_y)
    # Exactly the rows with valid features are present; everything else is 0 in x, NaN in y.
    assert int(panel.present.sum()) == len(rows)
    absent = ~panel.present
    assert (panel.x[absent] == 0).all() and torch.isnan(panel.y[absent]).all()
    # ~10% of rows are missing at random. The last 20 dates stay present (their features are
    # known) but have no 20-day label: presence must not depend on the future.
    assert 0.85 < panel.present.float().mean() < 0.95
    assert 0.85 < panel.present[-20:].float().mean() < 0.95
    assert torch.isnan(panel.y[-20:, :, TARGET_NAMES.index("ret_20d")]).all()
    assert torch.isfinite(panel.y[-20:-1, :, 0][panel.present[-20:-1]]).all()


def test_rows_with_bad_features_are_absent_without_a_mask() -> None:
    frame = generate_market(n_stocks=6, n_dates=10, seed=2)
    frame = frame.with_columns(
        pl.when((pl.col("code") == "S0002") & (pl.col("date") == pl.col("date").min()))
        .then(float("nan"))
        .otherwise(pl.col("f_own"))
        .alias("f_own")
    )
    panel = dense_panel(_cache(frame, mask=False))
    assert panel.present.sum() == 6 * 10 - 1 and not panel.present[0, 1]
    assert panel.x[0, 1].abs().sum() == 0
    # Without a mask, NaN targets stay NaN on present rows (the loss masks them).
    assert panel.present[-1].all() and torch.isnan(panel.y[-1, :, 0]).all()


def test_duplicate_rows_are_refused() -> None:
    fc = _cache(generate_market(n_stocks=4, n_dates=5, seed=0))
    fc.code_index[1] = fc.code_index[0]
    with pytest.raises(UserError, match="twice"):
        dense_panel(fc)


def test_window(frame: pl.DataFrame) -> None:
    panel = dense_panel(_cache(frame))
    d, lookback = 40, 7
    x, idx = panel.window(d, lookback)
    expected_idx = torch.nonzero(panel.present[d]).squeeze(1)
    assert torch.equal(idx, expected_idx) and idx.dtype == torch.int64
    assert x.shape == (len(idx), lookback, len(FEATURE_NAMES)) and x.is_contiguous()
    for row, stock in enumerate(idx.tolist()):
        assert torch.equal(x[row], panel.x[d - lookback + 1 : d + 1, stock])
    assert torch.equal(x[:, -1], panel.x[d, idx])  # the last step is date d itself
    # A fresh tensor: writing to it leaves the panel alone.
    before = x.clone()
    x.add_(1.0)
    assert torch.equal(panel.window(d, lookback)[0], before)
    assert panel.window(lookback - 1, lookback)[0].shape[1] == lookback
    with pytest.raises(ValueError, match="start at date index >= lookback - 1"):
        panel.window(lookback - 2, lookback)
    with pytest.raises(IndexError):
        panel.window(80, 1)


def test_standardise_uses_training_dates_only(frame: pl.DataFrame) -> None:
    panel = dense_panel(_cache(frame))
    train = np.arange(5, 40)
    z = standardise(panel, train)

    rows = panel.x[train][panel.present[train]].double().numpy()  # (n, F)
    mean, std = rows.mean(0), rows.std(0)
    np.testing.assert_allclose(z.feature_mean.numpy(), mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(z.feature_std.numpy(), std, rtol=1e-5)
    present = panel.present
    expected = (panel.x.double().numpy() - mean) / std
    np.testing.assert_allclose(z.x[present].numpy(), expected[present.numpy()], atol=1e-4)
    assert (z.x[~present] == 0).all()
    train_rows = z.x[train][present[train]].double()
    np.testing.assert_allclose(train_rows.mean(0).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(train_rows.std(0, unbiased=False).numpy(), 1.0, atol=1e-4)
    assert panel.feature_mean is None  # the input panel is untouched
    assert z.y is panel.y  # targets are not touched

    # No leakage: wild values on non-training dates do not move the statistics.
    wild = panel.x.clone()
    wild[45:] = 1e6
    z2 = standardise(Panel(**{**panel.__dict__, "x": wild}), train)
    assert torch.equal(z2.feature_mean, z.feature_mean)
    assert torch.equal(z2.feature_std, z.feature_std)
    assert torch.equal(z2.x[:45], z.x[:45])


def test_standardise_constant_feature_is_centred_only() -> None:
    frame = generate_market(n_stocks=5, n_dates=30, seed=3).with_columns(
        pl.lit(2.5, dtype=pl.Float32).alias("f_const")
    )
    panel = dense_panel(_cache(frame, ("f_own", "f_const")))
    z = standardise(panel, np.arange(10))
    assert z.feature_std[1] == 1.0 and (z.x[..., 1] == 0).all()
    with pytest.raises(ValueError, match="at least one training date"):
        standardise(panel, np.array([], dtype=np.int64))


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
        "n_dates", "val_fraction", "test_fraction", "purge", "horizon", "lag"}


def test_date_split_reports_every_problem_and_short_panels() -> None:
    with pytest.raises(UserError, match="val_fraction.*test_fraction.*execution_lag.*purge=5"):
        date_split(100, val_fraction=1.5, test_fraction=-0.1, purge=5, horizon=20, lag=2)
    with pytest.raises(UserError, match="purge=20 must be >= .*20 \\+ 1"):
        date_split(100, val_fraction=0.2, test_fraction=0.2, purge=20, horizon=20, lag=1)
    with pytest.raises(UserError, match="too few.*0 training dates"):
        date_split(60, val_fraction=0.3, test_fraction=0.3, purge=20, horizon=20)


def test_future_feature_cannot_leak_across_the_split() -> None:
    """A feature equal to the future 20-day return predicts validation labels perfectly, yet
    the training labels end before validation begins."""
    n_dates, horizon = 120, 20
    frame = generate_market(n_stocks=25, n_dates=n_dates, seed=4)
    frame = frame.with_columns(pl.col("ret_20d").alias("f_future"))
    # Fill policy so the last dates stay present (their target is NaN, the feature too).
    panel = dense_panel(_cache(frame, (*FEATURE_NAMES, "f_future"), mask=False))
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


def test_real_feature_cache_gives_the_same_panel(tmp_path: Path) -> None:
    """The contract this module is written against, checked on the real cache."""
    from cache import CacheSpec, load_or_build

    frame = generate_market(n_stocks=12, n_dates=40, seed=6, missing_rate=0.1)
    fc = load_or_build(frame, tmp_path, CacheSpec(nan_policy="mask"))
    real = dense_panel(fc)
    fake = dense_panel(_cache(frame))
    assert torch.equal(real.present, fake.present)
    assert torch.equal(real.x, fake.x)
    assert torch.equal(torch.nan_to_num(real.y, nan=-9.0), torch.nan_to_num(fake.y, nan=-9.0))
    assert real.codes == fake.codes and np.array_equal(real.dates, fake.dates)
    assert real.feature_names == FEATURE_NAMES and real.target_names == TARGET_NAMES
