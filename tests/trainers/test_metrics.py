"""Financial metrics against scipy / numpy references computed date by date."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats

from trainers.metrics import (
    PER_DATE_COLUMNS,
    Book,
    Scoring,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    panel_metrics,
    panel_metrics_with_se,
    per_date_metrics,
    predictions_metrics_with_se,
    probabilistic_sharpe_ratio,
    sharpe_moments,
)


def _random_panel(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A shuffled panel with ties, NaNs, tiny dates and one constant-prediction date."""
    rng = np.random.default_rng(seed)
    sizes = [40, 3, 4, 5, 25, 60, 7, 33, 12, 50]  # dates 1-2 fall below min_stocks=5
    days = np.datetime64("2021-03-01") + np.arange(len(sizes))
    dates = np.repeat(days, sizes)
    n = len(dates)
    signal = rng.standard_normal(n)
    # Rounding creates many ties in both pred and target.
    pred = np.round(signal + rng.standard_normal(n), 1)
    target = np.round(0.3 * signal + rng.standard_normal(n), 1)
    pred[rng.random(n) < 0.08] = np.nan
    target[rng.random(n) < 0.08] = np.nan
    target[rng.random(n) < 0.05] = 0.0  # zero targets are excluded from the hit rate
    pred[dates == days[6]] = 0.25  # a constant-prediction date
    order = rng.permutation(n)
    return dates[order], pred[order], target[order]


def _reference(
    dates: np.ndarray, pred: np.ndarray, target: np.ndarray, quantile: float, min_stocks: int
) -> dict[np.datetime64, dict[str, float]]:
    """Date-by-date reference: scipy correlations, stable sort for the legs."""
    out = {}
    for day in np.unique(dates):
        sel = (dates == day) & np.isfinite(pred) & np.isfinite(target)
        p, t = pred[sel], target[sel]  # rows keep their input order
        n = len(p)
        if n < min_stocks:
            continue
        constant = np.ptp(p) == 0 or np.ptp(t) == 0
        n_leg = max(1, int(math.floor(quantile * n + 1e-9)))
        order = np.argsort(p, kind="stable")  # ties by row order
        row = {
            "n": n,
            "rank_ic": math.nan if constant else stats.spearmanr(p, t).statistic,
            "ic": math.nan if constant else stats.pearsonr(p, t).statistic,
            "long_short": math.nan
            if constant
            else t[order[-n_leg:]].mean() - t[order[:n_leg]].mean(),
            "hits": int(np.sum((np.sign(p) == np.sign(t)) & (t != 0))),
            "n_hit": int(np.sum(t != 0)),
        }
        out[day] = row
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("quantile", [0.2, 0.1, 0.5])
@pytest.mark.parametrize("sort_by_date", [False, True])
def test_per_date_matches_reference(seed: int, quantile: float, sort_by_date: bool) -> None:
    dates, pred, target = _random_panel(seed)
    if sort_by_date:  # the common layout (a cache panel); rows of a date keep their order
        order = np.argsort(dates, kind="stable")
        dates, pred, target = dates[order], pred[order], target[order]
    got = per_date_metrics(
        dates, pred, target, scoring=Scoring(book=Book(enter=quantile), min_stocks=5)
    )
    ref = _reference(dates, pred, target, quantile, 5)

    assert tuple(got.columns) == PER_DATE_COLUMNS
    assert list(got["date"].to_numpy().astype("datetime64[D]")) == sorted(ref)
    for row in got.iter_rows(named=True):
        expected = ref[np.datetime64(row["date"], "D")]
        assert row["n"] == expected["n"]
        assert row["hits"] == expected["hits"]
        assert row["n_hit"] == expected["n_hit"]
        for key in ("rank_ic", "ic", "long_short"):
            np.testing.assert_allclose(row[key], expected[key], rtol=1e-10, atol=1e-12)


def test_panel_metrics_match_reference() -> None:
    dates, pred, target = _random_panel(7)
    ref = _reference(dates, pred, target, 0.2, 5)
    rank_ic = np.array([r["rank_ic"] for r in ref.values()])
    ic = np.array([r["ic"] for r in ref.values()])
    ls = np.array([r["long_short"] for r in ref.values()])
    rank_ic, ic, ls = rank_ic[np.isfinite(rank_ic)], ic[np.isfinite(ic)], ls[np.isfinite(ls)]
    hits = sum(r["hits"] for r in ref.values())
    n_hit = sum(r["n_hit"] for r in ref.values())

    got = panel_metrics(dates, pred, target)

    assert got["n_dates"] == len(ref) == 8
    np.testing.assert_allclose(got["rank_ic"], rank_ic.mean(), rtol=1e-10)
    np.testing.assert_allclose(got["ic"], ic.mean(), rtol=1e-10)
    np.testing.assert_allclose(got["rank_icir"], rank_ic.mean() / rank_ic.std(ddof=1), rtol=1e-9)
    np.testing.assert_allclose(got["icir"], ic.mean() / ic.std(ddof=1), rtol=1e-9)
    np.testing.assert_allclose(got["hit_rate"], hits / n_hit, rtol=1e-12)
    np.testing.assert_allclose(got["long_short_mean"], ls.mean(), rtol=1e-10)
    np.testing.assert_allclose(got["sharpe"], ls.mean() / ls.std(ddof=1) * np.sqrt(252), rtol=1e-9)
    assert set(got) == {
        "rank_ic",
        "ic",
        "icir",
        "rank_icir",
        "hit_rate",
        "sharpe",
        "long_short_mean",
        "n_dates",
        "sharpe_net",
        "turnover",
    }
    assert all(isinstance(v, float) for v in got.values())


def test_hand_computed_small_panel() -> None:
    # Date 0: 5 stocks, pred ties at the bottom are broken by row order, so the bottom leg is
    # row 0 and the top leg is row 4: long-short = 0.05 - (-0.01) = 0.06.
    # Date 1: 5 stocks; target 0 on row 2 is excluded from the hit rate.
    dates = np.array([0] * 5 + [1] * 5)
    pred = np.array([1.0, 1.0, 1.0, 1.0, 2.0, -2.0, -1.0, 0.0, 1.0, 2.0])
    target = np.array([-0.01, 0.02, 0.03, -0.02, 0.05, -0.03, 0.01, 0.0, 0.02, 0.04])
    got = per_date_metrics(dates, pred, target)
    assert got["long_short"].to_list() == pytest.approx([0.06, 0.07])
    # Date 0 hits: signs equal on rows 1, 2, 4 -> 3 of 5; date 1: rows 0, 3, 4 -> 3 of 4.
    assert got["hits"].to_list() == [3, 3]
    assert got["n_hit"].to_list() == [5, 4]
    m = panel_metrics(dates, pred, target, scoring=Scoring(periods_per_year=4))
    assert m["hit_rate"] == pytest.approx(6 / 9)
    # Two daily long-shorts 0.06, 0.07: mean 0.065, std (ddof=1) 0.00707..., times sqrt(4).
    assert m["sharpe"] == pytest.approx(0.065 / np.std([0.06, 0.07], ddof=1) * 2)


def test_nan_policy() -> None:
    dates = np.repeat(np.arange(3), 6)
    pred = np.tile(np.arange(6.0), 3)
    target = pred.copy()
    # Date 0: two NaNs leave 4 < 5 valid rows -> skipped. Date 1: constant target -> NaN
    # correlations but counted for hits. Date 2: perfect ranking.
    pred[0] = np.nan
    target[1] = np.nan
    target[6:12] = 1.0
    per_date = per_date_metrics(dates, pred, target)
    assert per_date["date"].to_list() == [1, 2]
    assert math.isnan(per_date["rank_ic"][0]) and math.isnan(per_date["long_short"][0])
    assert per_date["rank_ic"][1] == pytest.approx(1.0)
    m = panel_metrics(dates, pred, target)
    assert m["rank_ic"] == pytest.approx(1.0)
    assert m["n_dates"] == 2.0
    # One finite daily value: its standard deviation, hence ICIR and Sharpe, is undefined.
    assert math.isnan(m["rank_icir"]) and math.isnan(m["sharpe"])
    # Date 1 hits: pred 0 vs target 1 misses, the other 5 hit; date 2: pred 0 vs target 0
    # excluded, 5 hits of 5.
    assert m["hit_rate"] == pytest.approx(10 / 11)


def test_no_usable_date_gives_nan_not_error() -> None:
    dates = np.array([0, 0, 1, 1])
    m = panel_metrics(dates, np.array([1.0, 2.0, 3.0, np.nan]), np.ones(4))
    assert m["n_dates"] == 0.0
    assert all(math.isnan(v) for k, v in m.items() if k != "n_dates")
    empty = per_date_metrics(np.array([], dtype=np.int64), np.array([]), np.array([]))
    assert empty.height == 0 and tuple(empty.columns) == PER_DATE_COLUMNS


def test_perfect_and_inverse_predictions() -> None:
    rng = np.random.default_rng(3)
    dates = np.repeat(np.arange(20), 30)
    target = rng.standard_normal(len(dates))
    good = panel_metrics(dates, target * 2 + 1, target)
    bad = panel_metrics(dates, -target, target)
    assert good["rank_ic"] == pytest.approx(1.0) and good["ic"] == pytest.approx(1.0)
    assert good["hit_rate"] < 1.0  # pred 2t+1 shares the sign of t only where t > 0 or t < -0.5
    assert bad["rank_ic"] == pytest.approx(-1.0) and bad["hit_rate"] == 0.0
    assert good["sharpe"] > 0 > bad["sharpe"]
    assert good["long_short_mean"] == pytest.approx(-bad["long_short_mean"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"book": "top"}, "book must be a trainers.metrics.book.Book"),
        ({"min_stocks": 1}, "min_stocks must be >= 2"),
        ({"cost_bps": -1.0}, "cost_bps must be a finite number >= 0"),
        ({"cost_bps": float("nan")}, "cost_bps must be a finite number >= 0"),
        ({"periods_per_year": 0}, "periods_per_year must be a finite number > 0"),
    ],
)
def test_bad_options_are_rejected(kwargs: dict[str, float], message: str) -> None:
    """A bad setting fails where the ``Scoring`` is made, before any figure is computed."""
    with pytest.raises(ValueError, match=message):
        panel_metrics(np.zeros(5), np.arange(5.0), np.arange(5.0), scoring=Scoring(**kwargs))


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="same length"):
        per_date_metrics(np.zeros(5), np.arange(4.0), np.arange(5.0))


@pytest.mark.parametrize("seed", range(5))
def test_heavy_ties_match_reference(seed: int) -> None:
    # Three distinct values only: every date is mostly ties, in pred and in target.
    rng = np.random.default_rng(100 + seed)
    dates = np.repeat(np.arange(30), rng.integers(1, 40, size=30))
    pred = rng.integers(-1, 2, size=len(dates)).astype(float)
    target = rng.integers(-1, 2, size=len(dates)).astype(float)
    got = per_date_metrics(dates, pred, target, scoring=Scoring(min_stocks=3))
    ref = _reference(dates, pred, target, 0.2, 3)
    assert got["date"].to_list() == sorted(ref)
    for row in got.iter_rows(named=True):
        expected = ref[row["date"]]
        for key in ("n", "hits", "n_hit"):
            assert row[key] == expected[key]
        for key in ("rank_ic", "ic", "long_short"):
            np.testing.assert_allclose(row[key], expected[key], rtol=1e-10, atol=1e-12)


def test_a_full_size_panel() -> None:
    # 750 dates x 4,000 stocks, 1% NaN (its time, beside a per-date loop, is in
    # scripts/bench_components.py)
    rng = np.random.default_rng(0)
    dates = np.repeat(np.arange(750), 4000)
    pred = rng.standard_normal(len(dates))
    target = 0.1 * pred + rng.standard_normal(len(dates))
    pred[rng.random(len(dates)) < 0.01] = np.nan
    m = panel_metrics(dates, pred, target)
    assert m["n_dates"] == 750 and 0.08 < m["rank_ic"] < 0.11


# -- the Sharpe ratio of an h-day target -----------------------------------------------------


def _fixed_legs_panel(
    n_days: int, horizon: int, daily_sharpe: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """10 stocks ranked by a fixed pred (legs: stocks 8, 9 long, 0, 1 short), daily returns
    with a known long-short Sharpe ratio, and h-day targets that sum h daily returns, so
    consecutive dates' targets overlap by h - 1 days. Returns dates, pred, target and the
    daily long-short series."""
    rng = np.random.default_rng(seed)
    n_stocks = 10
    daily = 0.01 * rng.standard_normal((n_days + horizon, n_stocks))
    # long-short of the daily returns: mean(r8, r9) - mean(r0, r1), std 0.01
    daily[:, 8:] += daily_sharpe * 0.01 / 2
    daily[:, :2] -= daily_sharpe * 0.01 / 2
    csum = np.vstack([np.zeros((1, n_stocks)), np.cumsum(daily, axis=0)])
    target = csum[horizon : horizon + n_days] - csum[:n_days]  # (D, S) r_t + ... + r_{t+h-1}
    dates = np.repeat(np.arange(n_days), n_stocks)
    pred = np.tile(np.arange(n_stocks, dtype=float), n_days)
    ls_daily = daily[:, 8:].mean(1) - daily[:, :2].mean(1)
    return dates, pred, target.reshape(-1), ls_daily


def test_horizon_sharpe_is_the_mean_of_non_overlapping_phases_by_hand() -> None:
    h = 20
    dates, pred, target, _ = _fixed_legs_panel(403, h, daily_sharpe=0.1, seed=11)
    # Date 57 has only 3 valid stocks: skipped, but it still takes its place in the calendar.
    target[(dates == 57) & (pred > 2)] = np.nan
    ref = _reference(dates, pred, target, 0.2, 5)
    assert 57 not in ref
    phase_sharpes = []
    for k in range(h):
        ls = np.array([ref[d]["long_short"] for d in range(k, 403, h) if d in ref])
        phase_sharpes.append(ls.mean() / ls.std(ddof=1) * math.sqrt(252 / h))
    got = panel_metrics(dates, pred, target, scoring=Scoring(horizon=h))
    assert got["sharpe"] == pytest.approx(np.mean(phase_sharpes), rel=1e-12)
    # The overlapping convention it replaces: every date's h-day return, times sqrt(252).
    every_date = np.array([r["long_short"] for r in ref.values()])
    overlapping = every_date.mean() / every_date.std(ddof=1) * math.sqrt(252)
    assert panel_metrics(dates, pred, target)["sharpe"] == pytest.approx(overlapping)
    # The other summaries do not depend on the horizon.
    one_day = panel_metrics(dates, pred, target)
    assert {k: v for k, v in got.items() if k != "sharpe"} == {
        k: v for k, v in one_day.items() if k != "sharpe"
    }


def test_horizon_sharpe_matches_the_daily_strategy_not_sqrt_h_times_it() -> None:
    # The daily long-short has annualised Sharpe 0.1 * sqrt(252) = 1.59. Holding h-day
    # positions of the same stocks earns the same annualised Sharpe ratio; the overlapping
    # convention reports about sqrt(h) = 4.5 times that.
    h, n_days = 20, 6000
    dates, pred, target, ls_daily = _fixed_legs_panel(n_days, h, daily_sharpe=0.1, seed=2)
    daily = ls_daily.mean() / ls_daily.std(ddof=1) * math.sqrt(252)
    honest = panel_metrics(dates, pred, target, scoring=Scoring(horizon=h))["sharpe"]
    overlapping = panel_metrics(dates, pred, target, scoring=Scoring(horizon=1))["sharpe"]
    assert honest == pytest.approx(daily, abs=0.35)  # SE of the estimate ~0.3 at 300 periods
    assert overlapping > 3.0 * honest


def test_horizon_one_is_the_daily_sharpe() -> None:
    dates, pred, target = _random_panel(4)
    assert panel_metrics(dates, pred, target, scoring=Scoring(horizon=1)) == panel_metrics(
        dates, pred, target
    )


@pytest.mark.parametrize("horizon", [0, -1, 1.5, True])
def test_bad_horizon_is_rejected(horizon: object) -> None:
    with pytest.raises(ValueError, match="horizon must be a whole number of dates >= 1"):
        panel_metrics(
            np.zeros(5), np.arange(5.0), np.arange(5.0), scoring=Scoring(horizon=horizon)
        )


# -- standard errors --------------------------------------------------------------------------


def _iid_panel(n_days: int, n_stocks: int, ic: float, seed: int):
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((n_days, n_stocks))
    target = ic * signal + math.sqrt(1 - ic**2) * rng.standard_normal((n_days, n_stocks))
    dates = np.repeat(np.arange(n_days), n_stocks)
    return dates, signal.reshape(-1), target.reshape(-1)


def test_bootstrap_se_matches_iid_formulas_on_independent_dates() -> None:
    dates, pred, target = _iid_panel(600, 50, ic=0.05, seed=5)
    got = panel_metrics_with_se(dates, pred, target)
    ref = _reference(dates, pred, target, 0.2, 5)
    rank_ic = np.array([r["rank_ic"] for r in ref.values()])
    ls = np.array([r["long_short"] for r in ref.values()])
    n = len(ls)
    # values are panel_metrics' values
    assert {k: v["value"] for k, v in got.items() if k != "bootstrap"} == panel_metrics(
        dates, pred, target
    )
    # Independent dates: SE of a mean = sd / sqrt(n); of a per-period Sharpe ratio S (Lo
    # 2002, normal returns) sqrt((1 + S^2 / 2) / n), then annualised.
    assert got["rank_ic"]["se"] == pytest.approx(rank_ic.std(ddof=1) / math.sqrt(n), rel=0.15)
    s = ls.mean() / ls.std(ddof=1)
    lo = math.sqrt((1 + s**2 / 2) / n) * math.sqrt(252)
    assert got["sharpe"]["se"] == pytest.approx(lo, rel=0.15)
    ir = rank_ic.mean() / rank_ic.std(ddof=1)
    assert got["rank_icir"]["se"] == pytest.approx(math.sqrt((1 + ir**2 / 2) / n), rel=0.15)
    assert math.isnan(got["hit_rate"]["se"]) and math.isnan(got["n_dates"]["se"])
    assert got["bootstrap"] == {"n_boot": 1000.0, "block_length": 9.0, "seed": 0.0}


def _newey_west_se(x: np.ndarray, lags: int) -> float:
    """SE of the mean with a Bartlett-kernel long-run variance (Newey and West 1987)."""
    d = x - x.mean()
    n = len(x)
    lrv = d @ d / n
    for k in range(1, lags + 1):
        lrv += 2 * (1 - k / (lags + 1)) * (d[k:] @ d[:-k]) / n
    return math.sqrt(lrv / n)


def test_bootstrap_se_sees_the_overlap_of_h_day_targets() -> None:
    # h-day targets made of daily cross-sections: consecutive dates share h - 1 days, so the
    # per-date RankIC series is autocorrelated and its mean is ~sqrt(h) less certain than
    # n independent dates would say.
    h, n_days, n_stocks = 10, 1500, 30
    rng = np.random.default_rng(8)
    signal = rng.standard_normal(n_stocks)  # one fixed ranking
    daily = 0.02 * signal + rng.standard_normal((n_days + h, n_stocks))
    csum = np.vstack([np.zeros((1, n_stocks)), np.cumsum(daily, axis=0)])
    target = (csum[h : h + n_days] - csum[:n_days]).reshape(-1)
    dates = np.repeat(np.arange(n_days), n_stocks)
    pred = np.tile(signal, n_days)
    got = panel_metrics_with_se(dates, pred, target, scoring=Scoring(horizon=h))
    rank_ic = per_date_metrics(dates, pred, target)["rank_ic"].to_numpy()
    naive = rank_ic.std(ddof=1) / math.sqrt(n_days)
    assert got["rank_ic"]["se"] > 2.0 * naive
    assert got["rank_ic"]["se"] == pytest.approx(_newey_west_se(rank_ic, 2 * h), rel=0.25)
    assert got["bootstrap"]["block_length"] == 20.0  # 10 * ceil(1500^(1/3) / 10)


def test_bootstrap_is_reproducible_and_seeded() -> None:
    dates, pred, target = _iid_panel(200, 20, ic=0.1, seed=1)
    a = panel_metrics_with_se(dates, pred, target, n_boot=200, seed=3)
    b = panel_metrics_with_se(dates, pred, target, n_boot=200, seed=3)
    c = panel_metrics_with_se(dates, pred, target, n_boot=200, seed=4)
    assert a == b
    assert a["sharpe"]["se"] != c["sharpe"]["se"]
    assert a["sharpe"]["se"] == pytest.approx(c["sharpe"]["se"], rel=0.25)


def test_se_options_and_small_samples() -> None:
    dates, pred, target = _iid_panel(30, 20, ic=0.1, seed=1)
    with pytest.raises(ValueError, match="block_length must be a positive multiple of horiz"):
        panel_metrics_with_se(dates, pred, target, scoring=Scoring(horizon=5), block_length=7)
    with pytest.raises(ValueError, match="n_boot must be >= 2"):
        panel_metrics_with_se(dates, pred, target, n_boot=1)
    # 30 dates hold fewer than two blocks of 20: no standard error, but the values are there.
    got = panel_metrics_with_se(dates, pred, target, scoring=Scoring(horizon=20))
    assert math.isnan(got["sharpe"]["se"]) and math.isnan(got["rank_ic"]["se"])
    assert got["rank_ic"]["value"] == panel_metrics(dates, pred, target)["rank_ic"]


def test_predictions_frame_gives_the_same_figures() -> None:
    dates, pred, target = _iid_panel(120, 15, ic=0.1, seed=9)
    frame = pl.DataFrame(
        {"date": dates, "code": np.tile(np.arange(15), 120), "pred": pred, "target": target}
    )
    got = predictions_metrics_with_se(frame, scoring=Scoring(horizon=5), n_boot=100)
    assert got == panel_metrics_with_se(
        dates, pred, target, codes=frame["code"].to_numpy(), scoring=Scoring(horizon=5), n_boot=100
    )
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['pred'\]"):
        predictions_metrics_with_se(frame.drop("pred"))


# -- deflated Sharpe ratio --------------------------------------------------------------------


def test_deflated_sharpe_ratio_step_by_step() -> None:
    # The worked example of Bailey and Lopez de Prado (2014): the best of N = 100 trials has an
    # annualised Sharpe ratio 2.5 over T = 1250 daily returns (250 a year) with skewness -3 and
    # kurtosis 10; the trials' annualised Sharpe ratios have variance 1/2.
    n, t, ppy, skew, kurt = 100, 1250, 250, -3.0, 10.0
    sr = 2.5 / math.sqrt(ppy)  # per day: 0.1581
    var = 0.5 / ppy  # variance of daily Sharpe ratios
    gamma = 0.5772156649015329
    sr0 = math.sqrt(var) * (
        (1 - gamma) * stats.norm.ppf(1 - 1 / n) + gamma * stats.norm.ppf(1 - 1 / (n * math.e))
    )
    assert sr0 == pytest.approx(0.1132, abs=2e-4)  # E[max] of 100 skill-less daily Sharpes
    z = (sr - sr0) * math.sqrt(t - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2)
    expected = stats.norm.cdf(z)
    got = deflated_sharpe_ratio(
        2.5,
        n_trials=n,
        sharpe_variance=0.5,
        n_obs=t,
        skew=skew,
        kurtosis=kurt,
        periods_per_year=ppy,
    )
    assert got == pytest.approx(expected, rel=1e-12)
    assert got == pytest.approx(0.90, abs=0.01)
    # The same in per-period units.
    per_day = deflated_sharpe_ratio(
        sr, n_trials=n, sharpe_variance=var, n_obs=t, skew=skew, kurtosis=kurt
    )
    assert per_day == pytest.approx(got, rel=1e-12)


def test_one_trial_is_the_probabilistic_sharpe_ratio_against_zero() -> None:
    sr, t = 0.08, 500
    got = deflated_sharpe_ratio(sr, n_trials=1, sharpe_variance=0.3, n_obs=t, skew=0, kurtosis=3)
    assert got == pytest.approx(stats.norm.cdf(sr * math.sqrt(t - 1) / math.sqrt(1 + sr**2 / 2)))
    assert got == probabilistic_sharpe_ratio(sr, benchmark=0.0, n_obs=t, skew=0, kurtosis=3)
    assert expected_max_sharpe(n_trials=1, sharpe_variance=0.3) == 0.0


def test_more_trials_or_more_dispersion_deflate_more() -> None:
    def dsr(n_trials: int, variance: float) -> float:
        return deflated_sharpe_ratio(
            2.0,
            n_trials=n_trials,
            sharpe_variance=variance,
            n_obs=750,
            skew=-0.5,
            kurtosis=5.0,
            periods_per_year=252,
        )

    by_trials = [dsr(n, 0.5) for n in (1, 2, 10, 100, 1000)]
    assert all(a > b for a, b in zip(by_trials, by_trials[1:], strict=False))
    assert dsr(50, 0.1) > dsr(50, 1.0)
    # Negative skew and fat tails widen the Sharpe ratio's error: a lower PSR.
    normal = probabilistic_sharpe_ratio(0.1, benchmark=0.0, n_obs=250, skew=0, kurtosis=3)
    assert probabilistic_sharpe_ratio(0.1, benchmark=0.0, n_obs=250, skew=-2, kurtosis=9) < normal


def test_deflated_sharpe_ratio_rejects_bad_inputs() -> None:
    kwargs = dict(sharpe_variance=0.1, n_obs=100, skew=0.0, kurtosis=3.0)
    with pytest.raises(ValueError, match="n_trials must be >= 1"):
        deflated_sharpe_ratio(0.1, n_trials=0, **kwargs)
    with pytest.raises(ValueError, match="n_obs must be >= 2"):
        deflated_sharpe_ratio(0.1, n_trials=5, **{**kwargs, "n_obs": 1})
    with pytest.raises(ValueError, match="sharpe_variance must be >= 0"):
        deflated_sharpe_ratio(0.1, n_trials=5, **{**kwargs, "sharpe_variance": -1.0})
    # Moments no distribution has (1 - skew SR + (kurt - 1) SR^2 / 4 <= 0): NaN, not an error.
    assert math.isnan(
        probabilistic_sharpe_ratio(1.0, benchmark=0.0, n_obs=10, skew=5.0, kurtosis=1.0)
    )


@pytest.mark.parametrize("horizon", [1, 5])
def test_sharpe_moments_feed_the_deflated_sharpe_ratio(horizon: int) -> None:
    dates, pred, target, _ = _fixed_legs_panel(600, horizon, daily_sharpe=0.1, seed=4)
    got = sharpe_moments(dates, pred, target, scoring=Scoring(horizon=horizon))
    ls = per_date_metrics(dates, pred, target)["long_short"].to_numpy()
    annual = panel_metrics(dates, pred, target, scoring=Scoring(horizon=horizon))["sharpe"]
    assert got["periods_per_year"] == 252 / horizon
    assert got["sharpe"] == pytest.approx(annual / math.sqrt(252 / horizon), rel=1e-12)
    assert got["n_obs"] == 600 / horizon
    assert got["skew"] == pytest.approx(stats.skew(ls), rel=1e-12)
    assert got["kurtosis"] == pytest.approx(stats.kurtosis(ls, fisher=False), rel=1e-12)
    # One trial: the PSR against 0 of the per-period Sharpe ratio, by hand.
    sr, t = got["sharpe"], got["n_obs"]
    z = sr * math.sqrt(t - 1) / math.sqrt(1 - got["skew"] * sr + (got["kurtosis"] - 1) / 4 * sr**2)
    dsr = deflated_sharpe_ratio(
        sr,
        n_trials=1,
        sharpe_variance=0.0,
        n_obs=t,
        skew=got["skew"],
        kurtosis=got["kurtosis"],
    )
    assert dsr == pytest.approx(stats.norm.cdf(z), rel=1e-12)


def test_the_calendar_gives_the_annualisation() -> None:
    from trainers.metrics import calendar_periods_per_year

    days = np.arange(np.datetime64("2015-01-01"), np.datetime64("2021-01-01"))
    business = days[np.is_busday(days)]
    assert calendar_periods_per_year(business) == 261
    # ~10 holidays a year, as an exchange calendar has: ~251.
    holidays = business[np.random.default_rng(0).permutation(len(business))[:60]]
    assert calendar_periods_per_year(np.setdiff1d(business, holidays)) == 251
    # Rows repeat per stock; only distinct dates count. Too few dates: the 252 convention.
    assert calendar_periods_per_year(np.repeat(business, 3)) == 261
    assert calendar_periods_per_year(business[:1]) == 252
