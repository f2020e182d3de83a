"""Turnover of the long-short book, and the long-short return net of trading costs.

The **book** of a date holds weight ``+1/k`` on each stock of the top leg and ``-1/k`` on each
of the bottom leg: the legs of ``long_short`` (``k = max(1, floor(quantile * n))`` stocks each,
ties in pred broken by row order). A date whose long-short is undefined (constant pred or
target) forms no book.

**Turnover** of a book: ``sum_i |w_i,t - w_i,prev|`` over every stock in either book, where
``prev`` is the book it replaces and a stock absent from one of the two books counts as weight
0 there. It runs from 0 (the same book again) to 4 (both legs replaced by other stocks: each
leg sells 1 and buys 1). The first book pays nothing and has no turnover.

With an h-day target (``horizon = h > 1``) the Sharpe ratio is the mean over h staggered books,
each rebalanced every h dates (phase k holds the dates at positions k, k + h, ... among the
panel's distinct dates; :mod:`trainers.metrics.registry`). Turnover follows the same books: a
date's book replaces the previous book **of its phase** (h positions earlier, or the last one
that phase formed), so it is a turnover per rebalance of one book, and the ``turnover`` figure
is the mean over the phases of each phase's mean turnover, as ``sharpe`` is. With ``h = 1`` it
is the mean over consecutive scored dates.

**Net long-short** of a date: ``long_short - turnover * cost_bps / 1e4`` (``cost_bps``: a
one-way cost per unit of traded notional; the first book of a phase pays 0); ``sharpe_net`` is
its Sharpe ratio, computed exactly as ``sharpe``. Stock identities (``codes``) are needed:
without them both series are NaN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from scipy import sparse

# One-way cost per unit of traded notional, in basis points: a liquid large-cap equity's
# spread and impact at modest size. Stated next to every net figure.
DEFAULT_COST_BPS = 5.0
BPS = 1e4


def book_matrix(code_by_rank: np.ndarray, n: np.ndarray, n_leg: np.ndarray,
                formed: np.ndarray, n_codes: int) -> sparse.csr_matrix:
    """The books as a sparse (G, n_codes) matrix of weights (scipy is imported here, not with
    the metrics: loading a workload must stay light).

    ``code_by_rank``: (G, M) code id of each date's rows in ascending pred order (padding
    after the first ``n[g]``); ``n_leg``: (G,) stocks per leg; ``formed``: (G,) whether the
    date forms a book.
    """
    g, m = code_by_rank.shape
    position = np.arange(m)[None, :]
    bottom = position < n_leg[:, None]
    top = (position >= (n - n_leg)[:, None]) & (position < n[:, None])
    bottom &= formed[:, None]
    top &= formed[:, None]
    rows_t, cols_t = np.nonzero(top)
    rows_b, cols_b = np.nonzero(bottom)
    rows = np.concatenate([rows_t, rows_b])
    codes = np.concatenate([code_by_rank[rows_t, cols_t], code_by_rank[rows_b, cols_b]])
    weights = np.concatenate([1.0 / n_leg[rows_t], -1.0 / n_leg[rows_b]])
    from scipy import sparse

    return sparse.csr_matrix((weights, (rows, codes)), shape=(g, n_codes))


def book_turnover(books: sparse.csr_matrix, position: np.ndarray, formed: np.ndarray,
                  horizon: int) -> np.ndarray:
    """(G,) turnover of each date's book against the previous book of its phase; NaN where
    the date forms no book or its book is its phase's first."""
    out = np.full(books.shape[0], np.nan)
    idx = np.flatnonzero(formed)
    if len(idx) < 2:
        return out
    phase = position[idx] % horizon
    ordered = idx[np.lexsort((position[idx], phase))]  # by phase, then in time
    same = np.diff(phase[np.lexsort((position[idx], phase))]) == 0
    cur, prev = ordered[1:][same], ordered[:-1][same]
    if len(cur):
        diff = books[cur] - books[prev]
        out[cur] = np.asarray(abs(diff).sum(axis=1)).ravel()
    return out


def net_long_short(long_short: np.ndarray, turnover: np.ndarray,
                   cost_bps: float) -> np.ndarray:
    """Long-short minus its trading cost; a first book (NaN turnover, finite long-short)
    pays nothing."""
    return long_short - np.nan_to_num(turnover, nan=0.0) * (cost_bps / BPS)
