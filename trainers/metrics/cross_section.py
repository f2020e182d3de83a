"""Per-date cross-sectional metrics of a ranking model, and their panel summaries.

Per-date quantities (``per_date_metrics``), one cross-section at a time:

* ``rank_ic``: Spearman correlation of pred vs target within the date (Pearson of the
  average ranks, ties share their mean rank, as :func:`scipy.stats.spearmanr`).
* ``ic``: Pearson correlation of pred vs target within the date.
* ``long_short``: the return of the date's long-short **book** (:mod:`trainers.metrics.book`):
  with the plain book, the equal-weight mean target of the top ``enter`` fraction of stocks by
  pred minus that of the bottom one, each leg ``max(1, floor(enter * n))`` stocks; a book with
  hold bands or score smoothing picks its legs as that module says. Ties in the ranked score
  are broken by row order (stable sort; a cache panel is sorted by code, so the tie-break is by
  code), which makes the legs deterministic.
* ``hits`` / ``n_hit``: how many rows have ``sign(pred) == sign(target)`` / how many rows have
  a nonzero target. Rows with a zero target are excluded (no direction to guess); a zero pred
  against a nonzero target is a miss.
* ``turnover`` / ``long_short_net``: the weight traded by the date's long-short book and its
  long-short net of ``cost_bps`` (:mod:`trainers.metrics.turnover`); NaN without ``codes``.

``panel_metrics`` reduces these series to the figures of :mod:`trainers.metrics.registry`
(their definitions are there). The NaN policy is in :mod:`trainers.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from trainers.metrics.book import PLAIN, Book, build_books, smooth_scores
from trainers.metrics.registry import METRICS, PerDate
from trainers.metrics.scoring import SCORING, TRADING_DAYS_PER_YEAR, Scoring
from trainers.metrics.turnover import (
    book_matrix,
    book_turnover,
    net_long_short,
)

DEFAULT_QUANTILE = PLAIN.enter  # quintile legs, the usual equity long-short convention

PER_DATE_COLUMNS = ("date", "n", "rank_ic", "ic", "long_short", "hits", "n_hit", "turnover",
                    "long_short_net")


def calendar_periods_per_year(dates: np.ndarray) -> float:
    """Distinct dates per year of a panel's calendar: ``(D - 1)`` intervals over its span in
    years (365.25 days), rounded to a whole number. A real daily panel gives ~250 (its
    holidays and listings decide), a calendar of every business day 261; with fewer than two
    distinct dates, ``TRADING_DAYS_PER_YEAR``."""
    days = np.unique(np.asarray(dates).astype("datetime64[D]"))
    if len(days) < 2:
        return float(TRADING_DAYS_PER_YEAR)
    span_years = float((days[-1] - days[0]).astype(np.int64)) / 365.25
    return float(round((len(days) - 1) / span_years))


def _check_inputs(
    dates: np.ndarray, pred: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dates = np.asarray(dates)
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if not (dates.ndim == pred.ndim == target.ndim == 1):
        raise ValueError(
            "dates, pred and target must be 1-D arrays (one entry per (date, stock) row); got "
            f"shapes {dates.shape}, {pred.shape}, {target.shape}"
        )
    if not (len(dates) == len(pred) == len(target)):
        raise ValueError(
            f"dates, pred and target must have the same length; got {len(dates)}, "
            f"{len(pred)}, {len(target)}"
        )
    return dates, pred, target


@dataclass(frozen=True)
class _Layout:
    """Where each (valid) row goes in a (G, M) matrix: one matrix row per date, the date's
    rows from the left in input order; M is the largest date's row count."""

    dates: np.ndarray  # (G,) unique dates, ascending
    counts: np.ndarray  # (G,) rows per date
    group: np.ndarray  # (N,) matrix row of each input row
    column: np.ndarray  # (N,) matrix column of each input row

    def dense(self, values: np.ndarray, pad: float) -> np.ndarray:
        m = np.full((len(self.dates), int(self.counts.max())), pad)
        m[self.group, self.column] = values
        return m


def _layout(dates: np.ndarray) -> _Layout:
    if len(dates) > 1 and not np.all(dates[1:] >= dates[:-1]):
        uniq, group = np.unique(dates, return_inverse=True)
        group = group.reshape(-1)
        # A stable sort keeps each date's rows in input order (the legs' tie-break).
        order = np.argsort(group, kind="stable")
        counts = np.bincount(group, minlength=len(uniq))
        column = np.empty(len(group), dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        column[order] = np.arange(len(group)) - np.repeat(starts, counts)
    else:  # the usual case, a panel sorted by date: a linear scan, no sort
        first = np.ones(len(dates), dtype=bool)
        first[1:] = dates[1:] != dates[:-1]
        uniq, group = dates[first], np.cumsum(first) - 1
        counts = np.bincount(group, minlength=len(uniq))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        column = np.arange(len(group)) - starts[group]
    return _Layout(uniq, counts, group, column)


def _centred_sorted_ranks(sorted_values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Average ranks minus their mean (n + 1) / 2, for rows sorted ascending with padding
    after the first ``counts[g]`` cells; padding reads 0. Ties share the mean of their
    positions."""
    g, m = sorted_values.shape
    position = np.arange(m, dtype=np.float64)
    valid = position[None, :] < counts[:, None]
    ranks = np.broadcast_to(position + 1.0, (g, m)).copy()  # no ties: rank = position + 1
    tied = np.zeros((g, m), dtype=bool)
    tied[:, 1:] = (sorted_values[:, 1:] == sorted_values[:, :-1]) & valid[:, 1:]
    rows = np.flatnonzero(tied.any(1))
    if len(rows):  # only dates with ties pay for the run bookkeeping
        sub = tied[rows]
        new_run = ~sub
        k = np.broadcast_to(np.arange(m), sub.shape)
        run_start = np.maximum.accumulate(np.where(new_run, k, 0), axis=1)
        run_end_flag = np.ones_like(sub)
        run_end_flag[:, :-1] = new_run[:, 1:]
        run_end = np.minimum.accumulate(np.where(run_end_flag, k, m)[:, ::-1], axis=1)[:, ::-1]
        ranks[rows] = (run_start + run_end) / 2.0 + 1.0
    ranks -= ((counts + 1) / 2.0)[:, None]
    ranks[~valid] = 0.0
    return ranks


def _order_ties_by_column(order: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """Make an argsort stable: within runs of equal values, order by column (= row order).

    The unstable (SIMD) argsort is several times faster than a stable one, and ties are rare,
    so only the tied positions are re-sorted.
    """
    tied_next = np.zeros(sorted_values.shape, dtype=bool)
    tied_next[:, :-1] = (sorted_values[:, 1:] == sorted_values[:, :-1]) & np.isfinite(
        sorted_values[:, 1:]
    )
    if not tied_next.any():
        return order
    in_run = tied_next.copy()
    in_run[:, 1:] |= tied_next[:, :-1]
    rows, cols = np.nonzero(in_run)  # row-major: each run's cells are contiguous, in order
    run_id = np.cumsum(~np.concatenate([[False], tied_next[rows[:-1], cols[:-1]]]))
    resorted = np.lexsort((order[rows, cols], run_id))
    order = order.copy()
    order[rows, cols] = order[rows, cols][resorted]
    return order


def per_date_metrics(
    dates: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray,
    *,
    codes: np.ndarray | None = None,
    scoring: Scoring = SCORING,
) -> pl.DataFrame:
    """One row per usable date, sorted by date: ``date, n, rank_ic, ic, long_short, hits, n_hit,
    turnover, long_short_net``.

    ``n`` is the number of valid rows of the date. ``rank_ic``, ``ic`` and ``long_short`` are NaN
    on a date whose pred or target is constant. ``codes`` (one stock identity per row) lets the
    books be compared from date to date: ``turnover`` is against the previous book of the date's
    ``horizon`` phase, ``long_short_net`` pays ``cost_bps`` per unit traded
    (:mod:`trainers.metrics.turnover`); both are NaN without ``codes``. See the module docstring
    for the definitions and :mod:`trainers.metrics` for the NaN policy.

    Vectorised over a (dates, largest date) matrix: per-date sums are row sums, ranks and legs
    come from numpy's SIMD argsort along the stock axis. No Python loop over dates or rows for
    the plain book; a book with hold bands or smoothing loops over dates (each book depends on
    the one before), with vector operations over the date's stocks.
    Memory is a few float64 copies of that matrix (about 24 MB each at 750 x 4,000).
    """
    dates, pred, target = _check_inputs(dates, pred, target)
    horizon, book, min_stocks = scoring.horizon, scoring.book, scoring.min_stocks
    all_dates = dates
    code_ids, n_codes = _code_ids(codes, len(dates))
    keep = np.isfinite(pred) & np.isfinite(target)
    if not keep.all():
        dates, pred, target, code_ids = dates[keep], pred[keep], target[keep], code_ids[keep]
    lay = _layout(dates)
    if (lay.counts < min_stocks).any():  # drop the rows of dates with too few stocks
        rows = lay.counts[lay.group] >= min_stocks
        dates, pred, target, code_ids = dates[rows], pred[rows], target[rows], code_ids[rows]
        lay = _layout(dates)
    n_dates = len(lay.dates)
    if n_dates == 0:
        empty = {c: np.zeros(0) for c in PER_DATE_COLUMNS[1:]}
        return pl.DataFrame({"date": lay.dates, **empty}).with_columns(
            pl.col("n", "hits", "n_hit").cast(pl.Int64)
        )
    n = lay.counts.astype(np.float64)
    p = lay.dense(pred, 0.0)  # (G, M), zero padding
    t = lay.dense(target, 0.0)
    width = p.shape[1]
    padding = np.arange(width)[None, :] >= lay.counts[:, None]  # (G, M)
    has_padding = bool(padding.any())

    # IC: centre per date, then row sums (padding must stay 0 after centring).
    p_c = p - (p.sum(1) / n)[:, None]
    t_c = t - (t.sum(1) / n)[:, None]
    if has_padding:
        p_c[padding] = 0.0
        t_c[padding] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        ic = (p_c * t_c).sum(1) / np.sqrt(np.square(p_c).sum(1) * np.square(t_c).sum(1))
    del p_c, t_c
    # Hits: the product is > 0 exactly when both signs agree and neither is 0; padding is 0.
    hits = (p * t > 0).sum(1)
    n_hit = (t != 0).sum(1)

    # Ranks: +inf padding sorts last, so each date's values fill sorted positions 0..n-1.
    if has_padding:
        p[padding] = np.inf
        t[padding] = np.inf
    order_p = np.argsort(p, axis=1)
    p_sorted = np.take_along_axis(p, order_p, axis=1)
    order_p = _order_ties_by_column(order_p, p_sorted)  # the legs break ties by row order
    order_t = np.argsort(t, axis=1)
    t_sorted = np.take_along_axis(t, order_t, axis=1)
    rank_p = np.empty_like(p)  # centred ranks, back in input layout; padding 0
    np.put_along_axis(rank_p, order_p, _centred_sorted_ranks(p_sorted, lay.counts), axis=1)
    t_ranks_sorted = _centred_sorted_ranks(t_sorted, lay.counts)
    rank_t = np.empty_like(t)
    np.put_along_axis(rank_t, order_t, t_ranks_sorted, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rank_ic = (rank_p * rank_t).sum(1) / np.sqrt(
            np.square(rank_p).sum(1) * np.square(t_ranks_sorted).sum(1)
        )

    rows = np.arange(n_dates)
    last = lay.counts - 1
    constant_t = t_sorted[:, 0] == t_sorted[rows, last]
    constant = (p_sorted[:, 0] == p_sorted[rows, last]) | constant_t
    for series in (rank_ic, ic):
        series[constant] = np.nan

    if book.plain:
        long_short, turnover = _plain_book(lay, t, order_p, code_ids, n_codes, constant,
                                           book, all_dates, horizon)
    else:
        if not n_codes:
            raise ValueError("a book with score smoothing or hold bands needs codes (a stock "
                             "identity per row): it follows each stock from date to date")
        long_short, turnover = _managed_book(lay, p, t, padding, code_ids, n_codes, constant_t,
                                             book, all_dates, horizon)
    long_short_net = (net_long_short(long_short, turnover, scoring.cost_bps) if n_codes
                      else np.full(n_dates, np.nan))
    return pl.DataFrame(
        {
            "date": lay.dates,
            "n": lay.counts.astype(np.int64),
            "rank_ic": rank_ic,
            "ic": ic,
            "long_short": long_short,
            "hits": hits.astype(np.int64),
            "n_hit": n_hit.astype(np.int64),
            "turnover": turnover,
            "long_short_net": long_short_net,
        }
    )


def _plain_book(lay: _Layout, t: np.ndarray, order_p: np.ndarray, code_ids: np.ndarray,
                n_codes: int, constant: np.ndarray, book: Book, all_dates: np.ndarray,
                horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Long-short and turnover of the plain book (top and bottom ``k`` by pred), vectorised:
    the target in ascending pred order; bottom = first ``k``, top = last ``k`` valid."""
    n = lay.counts.astype(np.float64)
    n_leg = book.legs(lay.counts)[0].astype(np.float64)  # (G,)
    t_by_p = np.take_along_axis(t, order_p, axis=1)  # (G, M)
    position = np.arange(t.shape[1])[None, :]
    bottom = np.where(position < n_leg[:, None], t_by_p, 0.0).sum(1)
    in_top = (position >= (n - n_leg)[:, None]) & (position < n[:, None])
    top = np.where(in_top, t_by_p, 0.0).sum(1)
    long_short = (top - bottom) / n_leg
    long_short[constant] = np.nan
    turnover = np.full(len(lay.dates), np.nan)
    if n_codes:
        formed = np.isfinite(long_short)
        code_by_rank = np.take_along_axis(lay.dense(code_ids, 0), order_p, axis=1)
        books = book_matrix(code_by_rank.astype(np.int64), lay.counts, n_leg.astype(np.int64),
                            formed, n_codes)
        turnover = book_turnover(books, _date_positions(all_dates, lay.dates), formed, horizon)
    return long_short, turnover


def _managed_book(lay: _Layout, p: np.ndarray, t: np.ndarray, padding: np.ndarray,
                  code_ids: np.ndarray, n_codes: int, constant_t: np.ndarray, book: Book,
                  all_dates: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Long-short and turnover of a book with smoothing and/or hold bands
    (:mod:`trainers.metrics.book`). ``p``, ``t``: (G, M) with +inf padding."""
    from scipy import sparse

    valid = ~padding
    code = lay.dense(code_ids, 0).astype(np.int64)  # (G, M)
    score = (smooth_scores(p, code, valid, lay.counts, n_codes, book.halflife)
             if book.halflife > 0 else np.where(valid, p, 0.0))
    score[padding] = np.inf
    order = np.argsort(score, axis=1)
    s_sorted = np.take_along_axis(score, order, axis=1)
    order = _order_ties_by_column(order, s_sorted)
    rows = np.arange(len(lay.dates))
    formed = ~((s_sorted[:, 0] == s_sorted[rows, lay.counts - 1]) | constant_t)
    code_by_rank = np.take_along_axis(code, order, axis=1)
    position = _date_positions(all_dates, lay.dates)
    r, c, w = build_books(code_by_rank, lay.counts, formed, position, horizon, book, n_codes)
    books = sparse.csr_matrix((w, (r, c)), shape=(len(lay.dates), n_codes))
    target = sparse.csr_matrix((np.where(valid, t, 0.0)[valid], (np.nonzero(valid)[0],
                               code[valid])), shape=books.shape)
    long_short = np.asarray(books.multiply(target).sum(axis=1)).ravel()
    long_short[~formed] = np.nan
    return long_short, book_turnover(books, position, formed, horizon)


def _code_ids(codes: np.ndarray | None, n_rows: int) -> tuple[np.ndarray, int]:
    """An integer id per row's stock (0 for every row without ``codes``) and how many
    distinct stocks there are (0 without ``codes``)."""
    if codes is None:
        return np.zeros(n_rows, dtype=np.int64), 0
    codes = np.asarray(codes)
    if codes.shape != (n_rows,):
        raise ValueError(f"codes must be 1-D with one entry per row ({n_rows}); got shape "
                         f"{codes.shape}")
    uniq, ids = np.unique(codes, return_inverse=True)
    return ids.reshape(-1).astype(np.int64), len(uniq)


def _date_positions(dates: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Index of each usable date among all distinct dates of the input (usable or not)."""
    dates = np.asarray(dates)
    if len(dates) > 1 and np.all(dates[1:] >= dates[:-1]):
        first = np.ones(len(dates), dtype=bool)
        first[1:] = dates[1:] != dates[:-1]
        grid = dates[first]
    else:
        grid = np.unique(dates)
    return np.searchsorted(grid, usable)


def _summaries(
    per_date: pl.DataFrame, position: np.ndarray, horizon: int, periods_per_year: float
) -> dict[str, float]:
    """Every registered metric of the per-date rows, in the order of ``METRICS``."""
    series = PerDate(
        rank_ic=per_date["rank_ic"].to_numpy(),
        ic=per_date["ic"].to_numpy(),
        long_short=per_date["long_short"].to_numpy(),
        turnover=per_date["turnover"].to_numpy(),
        long_short_net=per_date["long_short_net"].to_numpy(),
        hits=per_date["hits"].to_numpy(),
        n_hit=per_date["n_hit"].to_numpy(),
        position=position,
        horizon=horizon,
        periods_per_year=periods_per_year,
    )
    return {m.name: m.value(series) for m in METRICS}


def panel_metrics(
    dates: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray,
    *,
    codes: np.ndarray | None = None,
    scoring: Scoring = SCORING,
) -> dict[str, float]:
    """Summaries of the per-date series, as plain floats.

    Keys: the registered metrics, ``rank_ic, ic, icir, rank_icir, hit_rate, sharpe,
    long_short_mean, n_dates, turnover, sharpe_net`` (``n_dates`` is a float too, so the dict is
    uniformly JSON- and Optuna-friendly). ICIR is not annualised; the Sharpe ratio is, on
    non-overlapping ``horizon``-date periods (the number of dates the target spans: 20 for a
    20-day forward return). ``turnover`` and ``sharpe_net`` need ``codes`` (NaN without) and
    charge ``cost_bps`` per unit traded. Definitions in :mod:`trainers.metrics.registry` and
    :mod:`trainers.metrics.turnover`, NaN policy in :mod:`trainers.metrics`.
    """
    per_date = per_date_metrics(dates, pred, target, codes=codes, scoring=scoring)
    position = (
        _date_positions(dates, per_date["date"].to_numpy())
        if scoring.horizon > 1
        else np.arange(per_date.height)
    )
    return _summaries(per_date, position, scoring.horizon, scoring.periods_per_year)
