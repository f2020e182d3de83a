"""Financial metrics against scipy / numpy references computed date by date."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from trainers.metrics import PER_DATE_COLUMNS, panel_metrics, per_date_metrics


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
    got = per_date_metrics(dates, pred, target, quantile=quantile, min_stocks=5)
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
    m = panel_metrics(dates, pred, target, periods_per_year=4)
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
        ({"quantile": 0.0}, "quantile must be in"),
        ({"quantile": 0.6}, "quantile must be in"),
        ({"min_stocks": 1}, "min_stocks must be >= 2"),
    ],
)
def test_bad_options_are_rejected(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        panel_metrics(np.zeros(5), np.arange(5.0), np.arange(5.0), **kwargs)


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
    got = per_date_metrics(dates, pred, target, min_stocks=3)
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
