"""Financial metrics of a cross-sectional ranking model, as pure functions over a panel.

A panel is three aligned 1-D arrays, one entry per (date, stock) row: the row's ``dates``
key (any sortable dtype: ``datetime64``, int, str), the model's ``pred`` and the realised
``target`` (a forward return). Every metric is computed **per date first** (one cross-section
at a time), and only then averaged over dates, so a date with many stocks weighs as much as a
date with few.

* :mod:`trainers.metrics.cross_section`: ``per_date_metrics`` (RankIC, IC, long-short, hits
  of each date) and ``panel_metrics`` (their summaries over dates).
* :mod:`trainers.metrics.registry`: the summaries themselves (definitions, directions, which
  get a standard error, which are reported and tabled): adding a metric is one entry there.
* :mod:`trainers.metrics.bootstrap`: ``panel_metrics_with_se`` and
  ``predictions_metrics_with_se``, moving-block bootstrap standard errors over dates, and
  ``paired_difference``, one ranking minus another with a paired standard error.
* :mod:`trainers.metrics.sharpe`: ``sharpe_moments`` and the deflated Sharpe ratio.
* :mod:`trainers.metrics.scoring`: ``Scoring``, the settings every figure shares (horizon,
  cost, book, smallest cross-section, annualisation): every function here takes ``scoring=``.
* :mod:`trainers.metrics.book`: ``Book``, how a date's scores become the long-short book's
  weights (leg size, hold bands, score smoothing); every figure that trades uses it.
* :mod:`trainers.metrics.turnover`: the long-short book's turnover and its return net of
  ``cost_bps`` (``DEFAULT_COST_BPS`` = 5), behind ``turnover`` and ``sharpe_net``.

NaN policy:

* Rows whose pred or target is NaN (or +-inf) are dropped, date by date.
* Dates left with fewer than ``min_stocks`` valid rows are skipped entirely (no row in
  ``per_date_metrics``). The default of 5 is the smallest cross-section on which the metrics
  mean something: below it a Spearman correlation takes only a handful of distinct values
  (with 3 stocks: -1, -0.5, 0.5, 1) and the two 20% legs of a long-short would overlap.
* On a date where pred (or target) is constant, the correlations and the long-short are
  undefined (NaN): the date still counts for the hit rate but is skipped in the means of the
  correlations and of the long-short, and in their standard deviations.
* A summary with no usable value (no usable date; fewer than 2 values for a standard deviation;
  a zero standard deviation) is NaN, never an exception: an HPO objective must always get a
  number back, and NaN tells Optuna the trial produced no signal.
"""

from __future__ import annotations

from trainers.metrics.book import PLAIN, Book
from trainers.metrics.bootstrap import (
    DEFAULT_BOOT_SEED,
    DEFAULT_N_BOOT,
    SE_METRICS,
    default_block_length,
    paired_difference,
    panel_metrics_with_se,
    predictions_metrics_with_se,
)
from trainers.metrics.cross_section import (
    DEFAULT_QUANTILE,
    PER_DATE_COLUMNS,
    calendar_periods_per_year,
    panel_metrics,
    per_date_metrics,
)
from trainers.metrics.scoring import (
    DEFAULT_MIN_STOCKS,
    SCORING,
    TRADING_DAYS_PER_YEAR,
    Scoring,
)
from trainers.metrics.sharpe import (
    EULER_GAMMA,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    probabilistic_sharpe_ratio,
    sharpe_moments,
)
from trainers.metrics.turnover import DEFAULT_COST_BPS

__all__ = [
    "PLAIN",
    "Book",
    "DEFAULT_BOOT_SEED",
    "DEFAULT_COST_BPS",
    "DEFAULT_MIN_STOCKS",
    "DEFAULT_N_BOOT",
    "DEFAULT_QUANTILE",
    "EULER_GAMMA",
    "PER_DATE_COLUMNS",
    "SCORING",
    "SE_METRICS",
    "Scoring",
    "TRADING_DAYS_PER_YEAR",
    "default_block_length",
    "calendar_periods_per_year",
    "deflated_sharpe_ratio",
    "expected_max_sharpe",
    "paired_difference",
    "panel_metrics",
    "panel_metrics_with_se",
    "per_date_metrics",
    "predictions_metrics_with_se",
    "probabilistic_sharpe_ratio",
    "sharpe_moments",
]
