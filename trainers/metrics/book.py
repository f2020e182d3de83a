"""The long-short book: how a date's scores become weights, with turnover control.

Every figure that trades (``long_short``, ``sharpe``, ``sharpe_net``, ``turnover``) is the
return of a **book** built from each date's scores. :class:`Book` holds its three settings:

* ``enter`` (default 0.2): the fraction of the date's ``n`` stocks in each leg; a leg holds
  ``k = max(1, floor(enter * n))`` names, weight ``+1/k`` (long) and ``-1/k`` (short).
* ``exit`` (default ``enter``): the **hold band**. A stock held in the long leg stays while
  it ranks in the top ``exit`` fraction (``ke = max(k, floor(exit * n))`` names), instead of
  leaving as soon as it drops out of the top ``k``; the leg is then filled up to ``k`` with
  the best-ranked names not already held. The short leg mirrors it at the bottom. If more
  than ``k`` held names are inside the band (the universe shrank), the best-ranked ``k``
  stay. ``exit = enter`` rebuilds each leg from scratch: the top and bottom ``k``.
* ``halflife`` (default 0, off): **score smoothing**. Each date's scores are z-scored across
  the date's stocks (a constant date reads 0), then averaged over dates per stock with an
  exponential moving average ``s_t = a z_t + (1 - a) s_(t-1)``, ``a = 1 - 2^(-1/halflife)``
  (the weight of a score halves every ``halflife`` dates). A stock absent from the previous
  usable date restarts at its own z-score. The book ranks the smoothed score.

With ``halflife = 0`` and ``exit = enter`` the book is the plain quintile book of earlier
releases, computed by the vectorised path of ``per_date_metrics`` bit for bit; any other
setting runs :func:`build_books`, a loop over dates (the hold band makes each book depend on
the one before it). Ties in the ranked score are broken by row order, as in the plain book.

For an h-day target the books of each phase (every h-th date, ``trainers.metrics.turnover``)
are separate portfolios: the hold band compares a date's ranking with the previous book **of
its phase**. The smoothing runs over every usable date (it is a property of the signal).

The book changes only how predictions become weights: RankIC, IC and the hit rate stay the
model's own (of the raw scores), and a book setting can be changed on saved predictions
without retraining.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The leg fraction of the plain book: quintile legs, the usual equity long-short convention.
DEFAULT_ENTER = 0.2
# The largest leg or band: past half the universe the long and short legs would overlap.
MAX_FRACTION = 0.5
_EPS = 1e-9  # keeps e.g. 0.2 * 15 = 3.0000000000000004 from rounding down to 2


@dataclass(frozen=True)
class Book:
    """How scores become long-short weights (module docstring). ``exit=None`` = ``enter``."""

    enter: float = DEFAULT_ENTER
    exit: float | None = None
    halflife: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.enter, int | float) and 0.0 < self.enter <= MAX_FRACTION):
            problems.append(f"enter must be in (0, {MAX_FRACTION}] (the fraction of stocks "
                            f"in each leg); got {self.enter!r}")
        if self.exit is None:
            object.__setattr__(self, "exit", self.enter)
        elif not (isinstance(self.exit, int | float) and not problems
                  and self.enter <= self.exit <= MAX_FRACTION):
            problems.append(f"exit must be in [enter, {MAX_FRACTION}] (a held stock stays "
                            f"while in the top exit fraction); got exit={self.exit!r}, "
                            f"enter={self.enter!r}")
        if not (isinstance(self.halflife, int | float) and math.isfinite(self.halflife)
                and self.halflife >= 0):
            problems.append(f"halflife must be >= 0 dates (0 = no smoothing); got "
                            f"{self.halflife!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def plain(self) -> bool:
        """Whether this is the plain book (no smoothing, no hold band)."""
        return self.halflife == 0 and self.exit == self.enter

    def legs(self, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(stocks per leg ``k``, names inside the hold band ``ke``) for date sizes ``n``."""
        n = np.asarray(n, dtype=np.float64)
        k = np.maximum(1.0, np.floor(n * self.enter + _EPS))
        ke = np.maximum(k, np.floor(n * float(self.exit) + _EPS))
        return k.astype(np.int64), ke.astype(np.int64)

    def to_json(self) -> dict[str, float]:
        return {"enter": float(self.enter), "exit": float(self.exit),
                "halflife": float(self.halflife)}


PLAIN = Book()


def smooth_scores(score: np.ndarray, code: np.ndarray, valid: np.ndarray, counts: np.ndarray,
                  n_codes: int, halflife: float) -> np.ndarray:
    """Exponentially smoothed per-date z-scores (module docstring), in the input's layout.

    ``score``, ``code``: (G, M) per-date rows (padding where ``valid`` is False); ``counts``:
    (G,) valid rows per date. Returns (G, M) smoothed scores, padding 0.
    """
    g_dates, _ = score.shape
    x = np.where(valid, score, 0.0)
    mean = x.sum(1) / counts
    centred = np.where(valid, score - mean[:, None], 0.0)
    sd = np.sqrt(np.square(centred).sum(1) / counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(sd[:, None] > 0, centred / sd[:, None], 0.0)
    a = 1.0 - 0.5 ** (1.0 / halflife)
    out = np.zeros_like(z)
    prev = np.full(n_codes, np.nan)  # (C,) the previous usable date's smoothed score
    for g in range(g_dates):
        cols = np.flatnonzero(valid[g])
        c = code[g, cols]
        before = prev[c]
        now = np.where(np.isfinite(before), a * z[g, cols] + (1.0 - a) * before, z[g, cols])
        prev = np.full(n_codes, np.nan)
        prev[c] = now
        out[g, cols] = now
    return out


def build_books(code_by_rank: np.ndarray, counts: np.ndarray, formed: np.ndarray,
                position: np.ndarray, horizon: int, book: Book,
                n_codes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The books of every date under hold bands.

    ``code_by_rank``: (G, M) code id of each date's rows in ascending score order (padding
    after ``counts[g]``); ``formed``: (G,) whether the date forms a book; ``position``: (G,)
    index of each date among the panel's dates (for the phases). Returns the sparse triplets
    ``(rows, codes, weights)`` of the books: one row per formed date.
    """
    k_all, ke_all = book.legs(counts)
    state: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    empty = np.zeros(0, dtype=np.int64)
    rank_of = np.full(n_codes, -1, dtype=np.int64)  # (C,) position in today's ranking
    taken = np.zeros(n_codes, dtype=bool)
    rows, codes, weights = [], [], []
    for g in np.flatnonzero(formed):
        n, k, ke = int(counts[g]), int(k_all[g]), int(ke_all[g])
        ranked = code_by_rank[g, :n]  # ascending score
        rank_of[ranked] = np.arange(n)
        phase = int(position[g]) % horizon
        held_long, held_short = state.get(phase, (empty, empty))
        r = rank_of[held_long]
        stay_long = held_long[r >= n - ke]
        stay_long = stay_long[np.argsort(-rank_of[stay_long], kind="stable")][:k]
        r = rank_of[held_short]
        stay_short = held_short[(r >= 0) & (r < ke)]
        stay_short = stay_short[np.argsort(rank_of[stay_short], kind="stable")][:k]
        taken[stay_long] = True
        taken[stay_short] = True
        best_first = ranked[::-1]
        new_long = best_first[~taken[best_first]][:k - len(stay_long)]
        taken[new_long] = True
        new_short = ranked[~taken[ranked]][:k - len(stay_short)]
        long = np.concatenate([stay_long, new_long])
        short = np.concatenate([stay_short, new_short])
        state[phase] = (long, short)
        taken[long] = False
        taken[short] = False
        rank_of[ranked] = -1
        rows.append(np.full(len(long) + len(short), g, dtype=np.int64))
        codes.append(np.concatenate([long, short]))
        weights.append(np.concatenate([np.full(len(long), 1.0 / k),
                                       np.full(len(short), -1.0 / k)]))
    if not rows:
        return empty, empty, np.zeros(0)
    return np.concatenate(rows), np.concatenate(codes), np.concatenate(weights)
