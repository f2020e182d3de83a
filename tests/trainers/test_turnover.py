"""Turnover and the net-of-cost Sharpe ratio, against a per-date loop written from the README's
definitions (weights +-1/k, sum of absolute weight changes, cost per unit traded)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from trainers.metrics import (
    DEFAULT_COST_BPS,
    Scoring,
    panel_metrics,
    panel_metrics_with_se,
    predictions_metrics_with_se,
)


def naive_turnover_and_net(dates: np.ndarray, codes: np.ndarray, pred: np.ndarray,
                           target: np.ndarray, *, horizon: int = 1,
                           cost_bps: float = DEFAULT_COST_BPS) -> tuple[float, float]:
    """(turnover, sharpe_net) by the definitions, one date and one stock at a time."""
    grid = sorted(set(dates.tolist()))
    books: dict[int, dict[str, float]] = {}
    gross: dict[int, float] = {}
    for pos, day in enumerate(grid):
        rows = (dates == day) & np.isfinite(pred) & np.isfinite(target)
        if rows.sum() < 5:
            continue
        p, t, c = pred[rows], target[rows], codes[rows]
        if p.min() == p.max() or t.min() == t.max():
            continue
        k = max(1, math.floor(0.2 * len(p) + 1e-9))
        order = np.argsort(p, kind="stable")
        book = {str(c[i]): -1.0 / k for i in order[:k]}
        book.update({str(c[i]): 1.0 / k for i in order[-k:]})
        books[pos] = book
        gross[pos] = float(t[order[-k:]].mean() - t[order[:k]].mean())
    turnovers, sharpes = [], []
    for phase in range(horizon):
        held = [pos for pos in sorted(books) if pos % horizon == phase]
        phase_turnover, net = [], []
        for i, pos in enumerate(held):
            if i == 0:
                traded = 0.0  # the first book pays nothing
            else:
                old, new = books[held[i - 1]], books[pos]
                traded = sum(abs(new.get(s, 0.0) - old.get(s, 0.0)) for s in {*old, *new})
                phase_turnover.append(traded)
            net.append(gross[pos] - traded * cost_bps / 1e4)
        if phase_turnover:
            turnovers.append(np.mean(phase_turnover))
        if len(net) >= 2:
            sharpes.append(np.mean(net) / np.std(net, ddof=1) * math.sqrt(252 / horizon))
    return float(np.mean(turnovers)), float(np.mean(sharpes))


def _panel(seed: int = 0, n_dates: int = 80, n_stocks: int = 40, persistence: float = 0.8
           ) -> tuple[np.ndarray, ...]:
    """A panel with listings and delistings (stocks absent on some dates), NaN rows and a
    pred that persists from date to date, so the books overlap partly."""
    rng = np.random.default_rng(seed)
    score = rng.standard_normal(n_stocks)
    rows = []
    for d in range(n_dates):
        score = persistence * score + math.sqrt(1 - persistence**2) * rng.standard_normal(
            n_stocks)
        for s in range(n_stocks):
            if (s < 5 and d < 20) or (s >= 35 and d > 60):  # not listed yet / delisted
                continue
            target = 0.01 * score[s] + 0.02 * rng.standard_normal()
            pred = score[s] + 0.5 * rng.standard_normal()
            if rng.random() < 0.03:
                pred = math.nan
            rows.append((d, f"S{s:03d}", pred, target))
    dates, codes, pred, target = (np.array(c) for c in zip(*rows, strict=True))
    return dates.astype(np.int64), codes, pred.astype(float), target.astype(float)


def test_a_hand_example_replacing_one_stock_of_each_leg() -> None:
    # 10 stocks, legs of 2. Day 1: long a, b; short i, j. Day 2: c replaces b in the long leg,
    # h replaces i in the short leg: 4 weights change by 1/2 each.
    codes = np.array(list("abcdefghij") * 2)
    day1 = np.array([10, 9, 8, 7, 6, 5, 4, 3, 2, 1], dtype=float)
    day2 = np.array([10, 8, 9, 7, 6, 5, 4, 1, 3, 2], dtype=float)
    dates = np.repeat([0, 1], 10)
    pred = np.concatenate([day1, day2])
    target = np.concatenate([np.linspace(0.01, -0.01, 10)] * 2)
    got = panel_metrics(dates, pred, target, codes=codes)
    assert got["turnover"] == pytest.approx(2.0)
    # A book flipped end to end: both legs sell 1 and buy 1.
    flipped = panel_metrics(dates, np.concatenate([day1, -day1]), target, codes=codes)
    assert flipped["turnover"] == pytest.approx(4.0)


@pytest.mark.parametrize("horizon", [1, 3])
def test_turnover_and_net_sharpe_equal_the_definitions(horizon: int) -> None:
    dates, codes, pred, target = _panel()
    for cost in (0.0, 5.0, 25.0):
        got = panel_metrics(
            dates, pred, target, codes=codes, scoring=Scoring(horizon=horizon, cost_bps=cost)
        )
        turnover, sharpe_net = naive_turnover_and_net(
            dates, codes, pred, target, horizon=horizon, cost_bps=cost
        )
        assert got["turnover"] == pytest.approx(turnover, rel=1e-12)
        assert got["sharpe_net"] == pytest.approx(sharpe_net, rel=1e-10)
        if cost == 0.0:
            assert got["sharpe_net"] == pytest.approx(got["sharpe"], rel=1e-12)
    assert 0.0 < got["turnover"] < 4.0
    assert got["sharpe_net"] < got["sharpe"]


def test_rows_in_any_order_give_the_same_figures() -> None:
    dates, codes, pred, target = _panel(seed=3)
    order = np.random.default_rng(1).permutation(len(dates))
    a = panel_metrics(dates, pred, target, codes=codes)
    b = panel_metrics(dates[order], pred[order], target[order], codes=codes[order])
    assert a["turnover"] == pytest.approx(b["turnover"], rel=1e-12)


def test_without_codes_the_cost_figures_are_nan_not_the_gross_ones() -> None:
    dates, _, pred, target = _panel()
    got = panel_metrics(dates, pred, target)
    assert math.isnan(got["turnover"]) and math.isnan(got["sharpe_net"])
    assert math.isfinite(got["sharpe"])


def test_a_slower_signal_turns_over_less_and_keeps_more_of_its_sharpe() -> None:
    figures = {}
    for name, persistence in (("fast", 0.2), ("slow", 0.97)):
        dates, codes, pred, target = _panel(persistence=persistence)
        figures[name] = panel_metrics(
            dates, pred, target, codes=codes, scoring=Scoring(cost_bps=20.0)
        )
    fast, slow = figures["fast"], figures["slow"]
    assert slow["turnover"] < fast["turnover"]
    assert (slow["sharpe"] - slow["sharpe_net"]) < (fast["sharpe"] - fast["sharpe_net"])


def test_bootstrap_gives_both_a_standard_error_and_the_frame_reads_its_codes() -> None:
    dates, codes, pred, target = _panel()
    got = panel_metrics_with_se(dates, pred, target, codes=codes, n_boot=50)
    for name in ("turnover", "sharpe_net"):
        assert math.isfinite(got[name]["se"]) and got[name]["se"] > 0
    frame = pl.DataFrame({"date": dates, "code": codes, "pred": pred, "target": target})
    via_frame = predictions_metrics_with_se(frame, n_boot=50)
    assert via_frame["turnover"] == got["turnover"]
    assert via_frame["sharpe_net"] == got["sharpe_net"]


def test_a_paired_difference_cancels_the_shared_noise() -> None:
    from trainers.metrics import paired_difference

    dates, codes, pred, target = _panel(n_dates=120)
    rng = np.random.default_rng(5)
    a = pl.DataFrame({"date": dates, "code": codes, "pred": pred, "target": target})
    b = a.with_columns(pl.Series("pred", pred + 0.3 * rng.standard_normal(len(pred))))
    diff = paired_difference(a, b, n_boot=200)
    se_a = predictions_metrics_with_se(a, n_boot=200)
    se_b = predictions_metrics_with_se(b, n_boot=200)
    for name in ("sharpe", "rank_ic", "sharpe_net", "turnover"):
        assert diff[name]["value"] == pytest.approx(
            se_a[name]["value"] - se_b[name]["value"], rel=1e-12, abs=1e-15
        )
        unpaired = math.hypot(se_a[name]["se"], se_b[name]["se"])
        assert 0 < diff[name]["se"] < 0.8 * unpaired, name
    same = paired_difference(a, a, n_boot=50)
    assert same["sharpe"]["value"] == 0.0 and same["sharpe"]["se"] == 0.0
