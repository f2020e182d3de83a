"""``Scoring``: how a period's rows become figures, the one home of the settings every figure
shares (the scored horizon, the cost per unit traded, the long-short book, the smallest
cross-section scored, the annualisation).

Every metric function of :mod:`trainers.metrics` takes one ``scoring=`` (default
``SCORING``: 1-date horizon, 5 bps, the plain quintile book, 5 stocks, 252 dates a year), and
so does everything above them (the held-out figures, the baselines, the tear sheet, the live
monitor): a study states its scoring once (the flagship's config: ``TrainConfig.scoring``) and no
function repeats the settings as keyword arguments. The settings are checked where a
``Scoring`` is made, so a bad one fails before any figure is computed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from trainers.metrics.book import PLAIN, Book
from trainers.metrics.turnover import DEFAULT_COST_BPS

DEFAULT_MIN_STOCKS = 5  # see trainers.metrics' NaN policy: smallest cross-section worth scoring
TRADING_DAYS_PER_YEAR = 252


def check_horizon(horizon: int) -> int:
    """``horizon`` as an int; ValueError unless it is a whole number of dates >= 1."""
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ValueError(
            f"horizon must be a whole number of dates >= 1 (the target's length); got {horizon!r}"
        )
    return int(horizon)


@dataclass(frozen=True)
class Scoring:
    """How rows are scored. ``horizon``: dates the target spans (a 20-day forward return: 20;
    the Sharpe ratio is taken over non-overlapping ``horizon``-date periods); ``cost_bps``:
    paid per unit traded by the net figures; ``book``: how a date's scores become weights
    (None reads as the plain quintile book, as a model saved before the book was settable
    has); ``min_stocks``: a date with fewer valid rows is skipped; ``periods_per_year``:
    dates per year, for annualising."""

    horizon: int = 1
    cost_bps: float = DEFAULT_COST_BPS
    book: Book = PLAIN
    min_stocks: int = DEFAULT_MIN_STOCKS
    periods_per_year: float = TRADING_DAYS_PER_YEAR

    def __post_init__(self) -> None:
        object.__setattr__(self, "horizon", check_horizon(self.horizon))
        if self.book is None:
            object.__setattr__(self, "book", PLAIN)
        if not isinstance(self.book, Book):
            raise ValueError(f"book must be a trainers.metrics.book.Book; got {self.book!r}")
        if not (isinstance(self.min_stocks, int | np.integer) and self.min_stocks >= 2):
            raise ValueError(
                f"min_stocks must be >= 2 (a correlation needs two points); got "
                f"{self.min_stocks!r}")
        cost = float(self.cost_bps)
        if not (math.isfinite(cost) and cost >= 0):
            raise ValueError(f"cost_bps must be a finite number >= 0; got {self.cost_bps!r}")
        per_year = float(self.periods_per_year)
        if not (math.isfinite(per_year) and per_year > 0):
            raise ValueError(
                f"periods_per_year must be a finite number > 0; got {self.periods_per_year!r}")

    def replace(self, **changes: object) -> Scoring:
        """A copy with ``changes`` (checked like a new one)."""
        return dataclasses.replace(self, **changes)


SCORING = Scoring()
