"""The synthetic market: schema, timing of features and targets, and the planted signal."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from trainers.atft_gat.synthetic import (
    FEATURE_NAMES,
    ORACLE_COLUMNS,
    TARGET_HORIZONS,
    TARGET_NAMES,
    generate_market,
    stock_codes,
)
from trainers.errors import UserError
from trainers.metrics import panel_metrics


@pytest.fixture(scope="module")
def market() -> tuple[pl.DataFrame, pl.DataFrame]:
    frame, oracle = generate_market(n_stocks=200, n_dates=500, seed=3, return_oracle=True)
    return frame, oracle


def _matrix(frame: pl.DataFrame, column: str, n_dates: int) -> np.ndarray:
    """(dates, stocks) matrix of a column of a complete panel sorted by (date, code)."""
    return frame[column].to_numpy().astype(np.float64).reshape(n_dates, -1)


def test_schema_and_order(market: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    frame, oracle = market
    assert frame.columns == ["date", "code", *FEATURE_NAMES, *TARGET_NAMES]
    assert frame.schema["date"] == pl.Date and frame.schema["code"] == pl.String
    assert all(frame.schema[c] == pl.Float32 for c in (*FEATURE_NAMES, *TARGET_NAMES))
    assert "f_ret_1d_past" in FEATURE_NAMES and all(c.startswith("f_") for c in FEATURE_NAMES)
    assert frame.height == 200 * 500
    assert frame.equals(frame.sort(["date", "code"]))
    assert frame["code"][:3].to_list() == ["S0001", "S0002", "S0003"]
    days = frame["date"].unique().sort().to_numpy().astype("datetime64[D]")
    assert days[0] == np.datetime64("2020-01-01")
    assert np.all(np.is_busday(days)) and len(days) == 500
    assert np.all(np.diff(days).astype(int) <= 3)  # consecutive business days
    assert oracle.columns == list(ORACLE_COLUMNS)
    assert oracle.select("date", "code").equals(frame.select("date", "code"))
    np.testing.assert_allclose(oracle["oracle"], oracle["oracle_own"] + oracle["oracle_peer"])
    # Features are complete; only the targets' end-of-sample rows are NaN.
    assert not np.isnan(frame.select(FEATURE_NAMES).to_numpy()).any()


def test_codes_keep_sort_order_past_9999() -> None:
    assert stock_codes(3) == ["S0001", "S0002", "S0003"]
    codes = stock_codes(12000)
    assert codes[0] == "S00001" and codes == sorted(codes)


def test_targets_are_compounded_forward_returns(
    market: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    frame, _ = market
    n_dates = 500
    past = _matrix(frame, "f_ret_1d_past", n_dates)  # (D, S) return t-1 -> t
    daily = np.vstack([past[1:], np.full((1, past.shape[1]), np.nan)])  # return t -> t+1
    np.testing.assert_allclose(_matrix(frame, "ret_1d", n_dates), daily, rtol=1e-5, atol=1e-7)
    for h, name in zip(TARGET_HORIZONS, TARGET_NAMES, strict=True):
        target = _matrix(frame, name, n_dates)
        # NaN exactly on the last h dates, where the future leaves the sample.
        assert np.isnan(target[-h:]).all() and not np.isnan(target[:-h]).any()
        t = 100
        expected = np.prod(1.0 + daily[t : t + h], axis=0) - 1.0
        np.testing.assert_allclose(target[t], expected, rtol=1e-4, atol=1e-6)
    five = _matrix(frame, "f_ret_5d_past", n_dates)
    np.testing.assert_allclose(five[10], np.prod(1.0 + past[6:11], axis=0) - 1.0, rtol=1e-4)


def test_same_seed_same_market_other_seed_other_market() -> None:
    a = generate_market(n_stocks=20, n_dates=40, seed=5)
    b = generate_market(n_stocks=20, n_dates=40, seed=5)
    c = generate_market(n_stocks=20, n_dates=40, seed=6)
    assert a.equals(b) and not a.equals(c)


def test_oracle_rank_ic_and_peer_share(market: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    frame, oracle = market
    dates, target = frame["date"].to_numpy(), frame["ret_1d"].to_numpy()
    full = panel_metrics(dates, oracle["oracle"].to_numpy(), target)["rank_ic"]
    own_only = panel_metrics(dates, oracle["oracle_own"].to_numpy(), target)["rank_ic"]
    assert 0.10 <= full <= 0.20
    peer_share = 1.0 - own_only / full  # share of the oracle's RankIC lost without the peers
    assert 0.25 <= peer_share <= 0.50
    # With no peer part the oracle is its own part.
    _, oracle0 = generate_market(
        n_stocks=200, n_dates=500, seed=3, peer_strength=0.0, return_oracle=True
    )
    assert np.all(oracle0["oracle_peer"].to_numpy() == 0.0)
    assert oracle0["oracle"].equals(oracle0["oracle_own"])


def test_peer_signal_flows_only_through_cluster_mates() -> None:
    # Without the seasonal nuisance (which FAN is there to remove), to isolate the peer path.
    n_dates = 500
    frame, oracle = generate_market(
        n_stocks=200, n_dates=n_dates, seed=3, seasonal_amplitude=0.0, return_oracle=True
    )
    dates, target = frame["date"].to_numpy(), frame["ret_1d"].to_numpy()
    # A stock's own f_peer says nothing about its own return ...
    assert abs(panel_metrics(dates, frame["f_peer"].to_numpy(), target)["rank_ic"]) < 0.02
    # ... but the mean f_peer of its cluster mates (what graph attention can gather) does, as
    # well as the oracle's peer part.
    cluster = oracle["cluster"].to_numpy()[:200]
    peer = _matrix(frame, "f_peer", n_dates)  # (D, S)
    members = np.eye(cluster.max() + 1)[cluster]  # (S, C)
    sums = peer @ members  # (D, C)
    mates_mean = (sums[:, cluster] - peer) / (members.sum(0)[cluster] - 1)  # (D, S)
    gathered = panel_metrics(dates, mates_mean.reshape(-1), target)["rank_ic"]
    oracle_peer = panel_metrics(dates, oracle["oracle_peer"].to_numpy(), target)["rank_ic"]
    assert gathered > 0.08
    assert gathered == pytest.approx(oracle_peer, rel=1e-6)  # the same ranking, up to scale


def test_lookback_averaging_beats_a_single_day(market: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    frame, _ = market
    n_dates, lookback = 500, 20
    own = _matrix(frame, "f_own", n_dates)
    # A trailing 20-day mean averages the observation noise away and, as 20 is a multiple of
    # every seasonal period, cancels the periodic nuisance exactly.
    csum = np.cumsum(np.vstack([np.zeros((1, own.shape[1])), own]), axis=0)
    trailing = np.full_like(own, np.nan)
    trailing[lookback - 1 :] = (csum[lookback:] - csum[:-lookback]) / lookback
    dates, target = frame["date"].to_numpy(), frame["ret_1d"].to_numpy()
    single = panel_metrics(dates, own.reshape(-1), target)["rank_ic"]
    averaged = panel_metrics(dates, trailing.reshape(-1), target)["rank_ic"]
    assert averaged > 0.07 and averaged > 2 * single


def test_seasonal_component_dominates_features() -> None:
    calm = generate_market(n_stocks=50, n_dates=200, seed=1, seasonal_amplitude=0.0)
    loud = generate_market(n_stocks=50, n_dates=200, seed=1)
    assert calm["f_noise"].std() == pytest.approx(1.0, abs=0.05)
    # Unit-variance noise plus a sine of amplitude 3: variance 1 + 9/2.
    assert loud["f_noise"].std() == pytest.approx(np.sqrt(5.5), rel=0.05)
    # The targets do not depend on the nuisance.
    assert calm["ret_20d"].equals(loud["ret_20d"])


def test_missing_rows() -> None:
    frame = generate_market(n_stocks=50, n_dates=100, seed=2, missing_rate=0.2)
    assert 0.75 * 5000 < frame.height < 0.85 * 5000
    assert frame.equals(frame.sort(["date", "code"]))


def test_bad_arguments_are_reported_together() -> None:
    with pytest.raises(UserError, match="n_stocks must be >= 2.*n_clusters must be >= 1"):
        generate_market(n_stocks=1, n_clusters=0)
    # More clusters than stocks: one stock per cluster, so no peers and no peer signal.
    _, oracle = generate_market(n_stocks=4, n_dates=10, n_clusters=10, return_oracle=True)
    assert sorted(oracle["cluster"][:4].to_list()) == [0, 1, 2, 3]
    assert (oracle["oracle_peer"] == 0).all()


def test_full_size_market() -> None:
    # the flagship's size (its time is in scripts/bench_components.py)
    frame = generate_market(n_stocks=500, n_dates=750)
    assert frame.height == 500 * 750
    assert frame["date"].n_unique() == 750 and frame["code"].n_unique() == 500
