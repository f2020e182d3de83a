"""The synthetic market: schema, timing of features and targets, the planted signal, the two
difficulties and the baselines.

Tests that need a strong signal (a model or a feature that visibly learns it) use the easy
market and say so; the realistic default is checked against its calibration."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from trainers.atft_gat.synthetic import (
    DIFFICULTIES,
    FEATURE_NAMES,
    ORACLE_COLUMNS,
    PHI_OWN,
    PHI_PEER,
    TARGET_HORIZONS,
    TARGET_NAMES,
    generate_market,
    market_baselines,
    oracle_forecast,
    stock_codes,
)
from trainers.errors import UserError
from trainers.metrics import Scoring, panel_metrics


@pytest.fixture(scope="module")
def market() -> tuple[pl.DataFrame, pl.DataFrame]:
    # The easy market: the tests below check that its planted paths are strong enough to see.
    frame, oracle = generate_market(
        n_stocks=200, n_dates=500, seed=3, difficulty="easy", return_oracle=True
    )
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
        n_stocks=200,
        n_dates=500,
        seed=3,
        difficulty="easy",
        peer_strength=0.0,
        return_oracle=True,
    )
    assert np.all(oracle0["oracle_peer"].to_numpy() == 0.0)
    assert oracle0["oracle"].equals(oracle0["oracle_own"])


def test_peer_signal_flows_only_through_cluster_mates() -> None:
    # Without the seasonal nuisance (which FAN is there to remove), to isolate the peer path;
    # on the easy market, whose peer signal stands far above the noise.
    n_dates = 500
    frame, oracle = generate_market(
        n_stocks=200,
        n_dates=n_dates,
        seed=3,
        seasonal_amplitude=0.0,
        difficulty="easy",
        return_oracle=True,
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


# -- difficulty --------------------------------------------------------------------------------


def test_easy_market_is_the_first_market_bit_for_bit() -> None:
    # Sums of squares of every column of the market as it shipped before the difficulty presets
    # (40 stocks x 60 dates, seed 3, 10% missing rows): the easy preset must reproduce it.
    frame, oracle = generate_market(
        n_stocks=40, n_dates=60, seed=3, missing_rate=0.1, difficulty="easy", return_oracle=True
    )
    before = {
        "f_own": 13525.739768781994,
        "f_peer": 11842.039579169243,
        "f_noise": 11547.346034430546,
        "f_ret_1d_past": 0.9437976589394256,
        "f_ret_5d_past": 5.593406394651977,
        "ret_1d": 0.9458931109419787,
        "ret_5d": 5.181531851382642,
        "ret_10d": 9.48508499039425,
        "ret_20d": 18.314211427889845,
    }
    assert frame.height == 2144
    for name, value in before.items():
        got = float(np.nansum(frame[name].to_numpy().astype(np.float64) ** 2))
        assert got == pytest.approx(value, rel=1e-6), name
    assert float((oracle["oracle"].to_numpy() ** 2).sum()) == pytest.approx(
        0.01655892375963013, rel=1e-6
    )


def test_presets_are_only_defaults() -> None:
    easy = DIFFICULTIES["easy"]
    explicit = generate_market(
        n_stocks=30,
        n_dates=50,
        seed=1,
        own_strength=easy.own_strength,
        peer_strength=easy.peer_strength,
        payoff_noise=easy.payoff_noise,
    )
    assert explicit.equals(generate_market(n_stocks=30, n_dates=50, seed=1, difficulty="easy"))
    default = generate_market(n_stocks=30, n_dates=50, seed=1)
    assert default.equals(generate_market(n_stocks=30, n_dates=50, seed=1, difficulty="realistic"))
    assert not default.equals(explicit)
    # Only the signal's strength differs: the features that do not carry it are the same.
    assert default["f_noise"].equals(explicit["f_noise"])


def test_payoff_shocks_follow_the_documented_formula() -> None:
    # r = mu_own (1 + k z_own) + mu_peer (1 + k z_peer) + (the same noise): the difference
    # between the market with and without payoff noise is, date by date, an exact linear
    # function of the two oracle parts, with standard normal coefficients / k.
    k, n_dates = 4.5, 400
    kwargs = dict(n_stocks=60, n_dates=n_dates, seed=7, difficulty="realistic")
    noisy, oracle = generate_market(payoff_noise=k, return_oracle=True, **kwargs)
    calm = generate_market(payoff_noise=0.0, **kwargs)
    diff = (noisy["ret_1d"].to_numpy() - calm["ret_1d"].to_numpy()).astype(np.float64)
    own = oracle["oracle_own"].to_numpy()
    peer = oracle["oracle_peer"].to_numpy()
    z = []
    for t in range(n_dates - 1):  # the last date has no 1-day target
        rows = slice(t * 60, (t + 1) * 60)
        x = np.column_stack([own[rows], peer[rows]])
        coef, *_ = np.linalg.lstsq(x, diff[rows], rcond=None)
        np.testing.assert_allclose(x @ coef, diff[rows], atol=2e-6)  # float32 targets
        z.append(coef / k)
    z = np.array(z)  # (dates, 2): z_own, z_peer
    assert np.abs(z.mean(0)).max() < 0.15 and np.abs(z.std(0) - 1).max() < 0.1
    assert abs(np.corrcoef(z.T)[0, 1]) < 0.15  # independent shocks for the two parts


def test_realistic_default_is_calibrated() -> None:
    # Targets (README): oracle RankIC 0.03-0.06 with a daily IR ~0.2 and a long-short Sharpe
    # 2-4; no raw feature beyond a RankIC of 0.03. One market, so with its sampling error.
    frame, oracle = generate_market(n_stocks=500, n_dates=750, seed=0, return_oracle=True)
    dates, target = frame["date"].to_numpy(), frame["ret_1d"].to_numpy()
    m = panel_metrics(dates, oracle["oracle"].to_numpy(), target)
    assert 0.03 <= m["rank_ic"] <= 0.06
    assert 0.1 <= m["rank_icir"] <= 0.3
    assert 1.5 <= m["sharpe"] <= 5.0
    features = {
        c: panel_metrics(dates, frame[c].to_numpy(), target)["rank_ic"] for c in FEATURE_NAMES
    }
    assert max(abs(v) for v in features.values()) < 0.03
    assert 0.005 < features["f_own"] < 0.03
    # The easy market, same seed, for contrast: several times stronger.
    easy_frame, easy_oracle = generate_market(
        n_stocks=500, n_dates=750, seed=0, difficulty="easy", return_oracle=True
    )
    easy = panel_metrics(
        easy_frame["date"].to_numpy(),
        easy_oracle["oracle"].to_numpy(),
        easy_frame["ret_1d"].to_numpy(),
    )
    assert easy["rank_ic"] > 2.5 * m["rank_ic"] and easy["sharpe"] > 2.5 * m["sharpe"]


def test_bad_difficulty_is_reported() -> None:
    with pytest.raises(UserError, match="difficulty must be one of 'realistic', 'easy', got 'x"):
        generate_market(difficulty="xhard")
    with pytest.raises(UserError, match="payoff_noise must be >= 0, got -1"):
        generate_market(payoff_noise=-1.0)


# -- baselines ---------------------------------------------------------------------------------


def test_oracle_forecast_is_the_expected_h_day_sum() -> None:
    _, oracle = generate_market(
        n_stocks=100, n_dates=600, seed=2, difficulty="easy", return_oracle=True
    )
    h = 10
    own_w = (1 - PHI_OWN**h) / (1 - PHI_OWN)
    peer_w = (1 - PHI_PEER**h) / (1 - PHI_PEER)
    expected = oracle["oracle_own"].to_numpy() * own_w + oracle["oracle_peer"].to_numpy() * peer_w
    # (atol: a forecast near zero, ~1e-7, differs in the last bits with the summation order)
    np.testing.assert_allclose(oracle_forecast(oracle, h), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(oracle_forecast(oracle, 1), oracle["oracle"].to_numpy())
    # The weight is what the AR(1) parts really sum to: regress the realised sum of the next
    # h dates' own part on today's (no intercept; the parts have mean 0).
    own = oracle["oracle_own"].to_numpy().reshape(600, 100)
    csum = np.vstack([np.zeros((1, 100)), np.cumsum(own, axis=0)])
    future = csum[h:] - csum[:-h]  # (600 - h + 1, S): own_t + ... + own_{t+h-1}
    now = own[: len(future)]
    assert (now * future).sum() / (now * now).sum() == pytest.approx(own_w, rel=0.05)


@pytest.fixture(scope="module")
def easy_market() -> tuple[pl.DataFrame, pl.DataFrame]:
    return generate_market(n_stocks=80, n_dates=300, seed=4, difficulty="easy", return_oracle=True)


def _rank_ics(frame: pl.DataFrame, rows: np.ndarray, target: str) -> dict[str, float]:
    dates, y = frame["date"].to_numpy(), frame[target].to_numpy()
    return {
        c: panel_metrics(dates[rows], frame[c].to_numpy()[rows], y[rows])["rank_ic"]
        for c in FEATURE_NAMES
    }


@pytest.mark.parametrize("horizon", [1, 20])
def test_market_baselines_choose_on_earlier_dates(easy_market, horizon: int) -> None:
    frame, oracle = easy_market
    days = np.unique(frame["date"].to_numpy())
    report = days[200:]
    got = market_baselines((frame, oracle), report, scoring=Scoring(horizon=horizon))
    dates = frame["date"].to_numpy()
    target = frame[f"ret_{horizon}d"].to_numpy()
    in_report = dates >= report[0]
    # Selection: dates 0 .. 199 - horizon, whose h-day targets end before the report starts.
    selection = dates <= days[199 - horizon]
    ics = _rank_ics(frame, selection, f"ret_{horizon}d")
    best = max(ics, key=lambda c: abs(ics[c]))
    sign = 1.0 if ics[best] > 0 else -1.0
    bf = got["best_feature"]
    assert (bf["name"], bf["sign"], bf["chosen_on"]) == (best, sign, "earlier dates")
    assert bf["n_selection_dates"] == 200 - horizon
    assert bf["selection_rank_ic"] == pytest.approx(ics[best], rel=1e-12)
    codes = frame["code"].to_numpy()
    expected = panel_metrics(
        dates[in_report],
        sign * frame[best].to_numpy()[in_report],
        target[in_report],
        codes=codes[in_report],
        scoring=Scoring(horizon=horizon),
    )
    assert {k: bf[k] for k in expected} == pytest.approx(expected, rel=1e-9)
    forecast = oracle_forecast(oracle, horizon)
    assert got["oracle"] == pytest.approx(
        panel_metrics(dates[in_report], forecast[in_report], target[in_report],
                      codes=codes[in_report], scoring=Scoring(horizon=horizon)),
        rel=1e-9,
    )
    # The joined frame gives the same.
    joined = frame.join(
        oracle.select("date", "code", "oracle_own", "oracle_peer"), on=["date", "code"]
    )
    assert market_baselines(joined, report, scoring=Scoring(horizon=horizon)) == got


def test_market_baselines_label_in_sample_and_given_selections(easy_market) -> None:
    frame, oracle = easy_market
    days = np.unique(frame["date"].to_numpy())
    early = market_baselines((frame, oracle), days[5:100])  # 5 earlier dates: too few
    assert early["best_feature"]["chosen_on"] == "report dates (in-sample)"
    assert early["best_feature"]["n_selection_dates"] == 95
    given = market_baselines((frame, oracle), days[200:], selection_dates=days[:50])
    assert given["best_feature"]["chosen_on"] == "selection dates"
    assert given["best_feature"]["n_selection_dates"] == 50
    # A panel without the oracle (a real one): only the feature baseline.
    real = market_baselines(frame, days[200:], features=["f_own", "f_ret_5d_past"])
    assert real["oracle"] is None and real["best_feature"]["name"] in ("f_own", "f_ret_5d_past")
    with pytest.raises(UserError, match="no target column 'ret_3d' for horizon=3"):
        market_baselines(frame, days[200:], scoring=Scoring(horizon=3))
    with pytest.raises(UserError, match=r"feature column\(s\) \['f_x'\] not in the market"):
        market_baselines(frame, days[200:], features=["f_x"])
    assert math.isfinite(real["best_feature"]["rank_ic"])


def test_the_trainer_names_its_market_difficulty() -> None:
    from cache._source import generate_synthetic, parse_synthetic
    from trainers.atft_gat.config import MARKET_DIFFICULTIES, TrainConfig
    from trainers.atft_gat.train import cache_source

    assert MARKET_DIFFICULTIES == tuple(DIFFICULTIES)

    source = cache_source(TrainConfig(n_stocks=20, n_dates=30, market_difficulty="easy"))
    assert source.endswith(",difficulty=easy")
    market = generate_synthetic(parse_synthetic(source))
    assert market.equals(generate_market(n_stocks=20, n_dates=30, seed=0, difficulty="easy"))
    assert cache_source(TrainConfig()).endswith(",difficulty=realistic")
    with pytest.raises(UserError, match="market_difficulty='hard': allowed: realistic, easy"):
        TrainConfig(market_difficulty="hard")
