"""The long-short book's turnover controls (score smoothing, hold bands), against a plain
loop over dates and stocks written from the README's definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainers.metrics import Book, Scoring, panel_metrics, per_date_metrics
from trainers.metrics.book import PLAIN


def naive_books(dates: np.ndarray, codes: np.ndarray, pred: np.ndarray, target: np.ndarray,
                book: Book, *, horizon: int = 1, cost_bps: float = 5.0
                ) -> tuple[dict[int, dict[str, float]], dict[int, float], dict[int, float],
                           dict[int, float]]:
    """(weights, long-short, turnover, net) of each date position, one stock at a time."""
    grid = sorted(set(dates.tolist()))
    a = 1.0 - 0.5 ** (1.0 / book.halflife) if book.halflife else 1.0
    smoothed: dict[str, float] = {}
    held: dict[int, tuple[list[str], list[str]]] = {}
    weights: dict[int, dict[str, float]] = {}
    gross: dict[int, float] = {}
    turnover: dict[int, float] = {}
    net: dict[int, float] = {}
    last_book: dict[int, dict[str, float]] = {}
    for pos, day in enumerate(grid):
        rows = np.flatnonzero((dates == day) & np.isfinite(pred) & np.isfinite(target))
        if len(rows) < 5:
            continue
        p = {str(codes[i]): float(pred[i]) for i in rows}
        t = {str(codes[i]): float(target[i]) for i in rows}
        order_rows = [str(codes[i]) for i in rows]  # input order: the tie-break
        if book.halflife:
            mean = sum(p.values()) / len(p)
            sd = math.sqrt(sum((v - mean) ** 2 for v in p.values()) / len(p))
            now = {}
            for c, v in p.items():
                z = (v - mean) / sd if sd > 0 else 0.0
                now[c] = a * z + (1 - a) * smoothed[c] if c in smoothed else z
            smoothed = now
            score = now
        else:
            score = p
        n = len(score)
        if len(set(score.values())) == 1 or len(set(t.values())) == 1:
            continue
        ranked = sorted(order_rows, key=lambda c: (score[c], order_rows.index(c)))
        rank = {c: i for i, c in enumerate(ranked)}
        k = max(1, math.floor(book.enter * n + 1e-9))
        ke = max(k, math.floor(book.exit * n + 1e-9))
        phase = pos % horizon
        old_long, old_short = held.get(phase, ([], []))
        stay_long = sorted([c for c in old_long if c in rank and rank[c] >= n - ke],
                           key=lambda c: -rank[c])[:k]
        stay_short = sorted([c for c in old_short if c in rank and rank[c] < ke],
                            key=lambda c: rank[c])[:k]
        long = list(stay_long)
        for c in reversed(ranked):
            if len(long) == k:
                break
            if c not in long and c not in stay_short:
                long.append(c)
        short = list(stay_short)
        for c in ranked:
            if len(short) == k:
                break
            if c not in short and c not in long:
                short.append(c)
        held[phase] = (long, short)
        w = {c: 1.0 / k for c in long} | {c: -1.0 / k for c in short}
        weights[pos] = w
        gross[pos] = sum(t[c] for c in long) / k - sum(t[c] for c in short) / k
        if phase in last_book:
            old = last_book[phase]
            turnover[pos] = sum(abs(w.get(c, 0.0) - old.get(c, 0.0)) for c in {*w, *old})
        last_book[phase] = w
        net[pos] = gross[pos] - turnover.get(pos, 0.0) * cost_bps / 1e4
    return weights, gross, turnover, net


def _panel(seed: int = 0, n_dates: int = 60, n_stocks: int = 30, churn: bool = True
           ) -> tuple[np.ndarray, ...]:
    """A persistent signal plus noise, with stocks leaving and re-entering and ties."""
    rng = np.random.default_rng(seed)
    alpha = rng.normal(size=n_stocks)
    dates, codes, pred, target = [], [], [], []
    day0 = np.datetime64("2020-01-01")
    for d in range(n_dates):
        for s in range(n_stocks):
            if churn and rng.random() < 0.1:
                continue  # the stock is absent today
            dates.append(day0 + d)
            codes.append(f"S{s:03d}")
            pred.append(round(alpha[s] + rng.normal(), 1))  # rounding makes ties
            target.append(0.01 * alpha[s] + 0.02 * rng.normal())
    return (np.array(dates), np.array(codes), np.array(pred), np.array(target))


BOOKS = [Book(), Book(exit=0.3), Book(enter=0.1, exit=0.4), Book(halflife=3.0),
         Book(enter=0.2, exit=0.35, halflife=1.5)]


@pytest.mark.parametrize("book", BOOKS, ids=lambda b: f"{b.enter}-{b.exit}-{b.halflife}")
@pytest.mark.parametrize("horizon", [1, 3])
def test_book_matches_a_plain_loop(book: Book, horizon: int) -> None:
    dates, codes, pred, target = _panel()
    got = per_date_metrics(dates, pred, target, codes=codes,
                           scoring=Scoring(book=book, horizon=horizon))
    _, gross, turnover, net = naive_books(dates, codes, pred, target, book, horizon=horizon)
    grid = sorted(set(dates.tolist()))
    by_pos = {grid.index(np.datetime64(r["date"], "D")): r for r in got.iter_rows(named=True)}
    for pos, row in by_pos.items():
        if pos not in gross:
            assert math.isnan(row["long_short"])
            continue
        assert row["long_short"] == pytest.approx(gross[pos], abs=1e-12)
        assert row["long_short_net"] == pytest.approx(net[pos], abs=1e-12)
        if pos in turnover:
            assert row["turnover"] == pytest.approx(turnover[pos], abs=1e-12)
        else:
            assert math.isnan(row["turnover"])
    assert len(gross) > 40


def test_hold_band_membership_matches_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The books' members (weights by stock) equal the loop's on every date, and the band
    keeps held names the plain book drops."""
    import trainers.metrics.cross_section as cs
    from trainers.metrics.book import build_books

    dates, codes, pred, target = _panel(seed=3)
    book = Book(enter=0.2, exit=0.4)
    seen = {}

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen["triplets"] = build_books(*args, **kwargs)
        return seen["triplets"]

    monkeypatch.setattr(cs, "build_books", spy)
    per_date_metrics(dates, pred, target, codes=codes, scoring=Scoring(book=book))
    names = np.unique(codes)
    got: dict[int, dict[str, float]] = {}
    for r, c, w in zip(*seen["triplets"], strict=True):
        got.setdefault(int(r), {})[str(names[c])] = float(w)
    weights, _, _, _ = naive_books(dates, codes, pred, target, book)
    assert list(got.values()) == [weights[p] for p in sorted(weights)]
    plain, _, _, _ = naive_books(dates, codes, pred, target, Book(enter=0.2))
    assert any(set(weights[p]) != set(plain[p]) for p in weights)


def test_plain_settings_reproduce_the_vectorised_book() -> None:
    """halflife 0 and exit == enter through the loop path equal the plain vectorised book."""
    import trainers.metrics.book as book_mod

    dates, codes, pred, target = _panel(seed=5)
    plain = per_date_metrics(dates, pred, target, codes=codes, scoring=Scoring(horizon=2))
    forced = Book()
    object.__setattr__(forced, "exit", 0.2 + 1e-12)  # not .plain, but the same legs
    assert not forced.plain and book_mod.PLAIN.plain
    looped = per_date_metrics(
        dates, pred, target, codes=codes, scoring=Scoring(horizon=2, book=forced)
    )
    for col in ("long_short", "turnover", "long_short_net", "rank_ic"):
        np.testing.assert_allclose(
            looped[col].to_numpy(), plain[col].to_numpy(), rtol=0, atol=1e-15, equal_nan=True
        )


def test_smoothing_and_bands_lower_turnover() -> None:
    dates, codes, pred, target = _panel(seed=1, n_dates=120, churn=False)
    base = panel_metrics(dates, pred, target, codes=codes)
    smoothed = panel_metrics(
        dates, pred, target, codes=codes, scoring=Scoring(book=Book(halflife=5.0))
    )
    banded = panel_metrics(dates, pred, target, codes=codes, scoring=Scoring(book=Book(exit=0.4)))
    assert smoothed["turnover"] < 0.6 * base["turnover"]
    assert banded["turnover"] < 0.6 * base["turnover"]
    assert smoothed["rank_ic"] == base["rank_ic"]  # the model's own ranking quality


def test_a_stock_that_leaves_restarts_its_average() -> None:
    from trainers.metrics.book import smooth_scores

    # Two dates, 3 stocks; stock 2 absent on date 0: its date-1 score is its own z-score.
    score = np.array([[1.0, -1.0, 0.0], [1.0, -1.0, 3.0]])
    code = np.array([[0, 1, 2], [0, 1, 2]])
    valid = np.array([[True, True, False], [True, True, True]])
    out = smooth_scores(score, code, valid, np.array([2, 3]), 3, halflife=1.0)
    z1 = (score[1] - score[1].mean()) / score[1].std()
    assert out[1, 2] == pytest.approx(z1[2])
    assert out[1, 0] == pytest.approx(0.5 * z1[0] + 0.5 * 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"enter": 0.0}, "enter must be in"),
        ({"enter": 0.6}, "enter must be in"),
        ({"exit": 0.1}, "exit must be in"),
        ({"exit": 0.7}, "exit must be in"),
        ({"halflife": -1.0}, "halflife must be >= 0"),
    ],
)
def test_bad_book_settings_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Book(**kwargs)


def test_a_managed_book_needs_codes() -> None:
    dates, codes, pred, target = _panel()
    with pytest.raises(ValueError, match="needs codes"):
        per_date_metrics(dates, pred, target, scoring=Scoring(book=Book(halflife=2.0)))
    assert PLAIN.plain
