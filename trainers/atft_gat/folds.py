"""Purged walk-forward folds: the study's validation as K consecutive blocks instead of one.

One validation window of a few hundred dates ranks trials mostly on noise (a RankIC over 200
dates has a standard error near half a realistic signal). With ``cv = "walk_forward"`` the
pre-test dates are cut so that every trial is validated on K disjoint blocks, each by a model
trained only on what came before it::

    fold 1: [ train ............ ][purge][ block 1 ]
    fold 2: [ train ........................... ][purge][ block 2 ]
    ...
    fold K: [ train ...................................................... ][purge][ block K ]
                                                                   then [purge][ test ][ span ]

Layout (date indices of the panel):

- The test period and the purge before it are the holdout split's (``date_split``): the last
  block ends ``purge`` dates before the test period, as the holdout's validation does.
- The blocks: with ``val_start`` set, the dates from it to that end, cut into K consecutive
  blocks; otherwise scikit-learn's ``TimeSeriesSplit`` sizes: the pre-test dates are counted
  in K + 1 parts of ``n // (K + 1)`` dates, and the last K parts are the blocks (the first,
  plus the remainder, is fold 1's training). Blocks differ in length by at most one date.
- ``cv_window = "expanding"``: fold k trains on every date up to ``purge`` dates before its
  block. ``"rolling"``: on the same number of dates as fold 1 (a window that slides forward).
- No training label of fold k reaches its block (``purge >= horizon + lag``); the dates of
  block k are training dates of the later folds, which is the point of walking forward.

The folds depend only on the panel's length and the data settings, never on a trial's
``lookback`` or batch: every trial of a study is scored on the same dates.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from trainers.errors import UserError


class CV(StrEnum):
    """How a trial is validated (``[trainer] cv``), parsed once when the config is made."""

    HOLDOUT = "holdout"  # one block before the test period
    WALK_FORWARD = "walk_forward"  # cv_folds blocks, each scored by a model trained before it


class CVWindow(StrEnum):
    """The training dates of a walk-forward fold (``cv_window``)."""

    EXPANDING = "expanding"  # every earlier date
    ROLLING = "rolling"  # as many dates as fold 1's training


CV_KINDS = tuple(c.value for c in CV)
CV_WINDOWS = tuple(w.value for w in CVWindow)


def split_problems(*, val_fraction: float, test_fraction: float, horizon: int | None,
                   lag: object, purge: int | None) -> list[tuple[str, object, str]]:
    """``(setting, value, rule)`` of every split setting that breaks its rule: the one home
    of these rules, for the config's checks (``TrainConfig``) and ``data.date_split``.
    ``horizon`` (the longest) or ``purge`` None: the purge rule is not checked yet."""
    out: list[tuple[str, object, str]] = []
    val_ok = 0.0 < val_fraction < 1.0
    if not val_ok:
        out.append(("val_fraction", val_fraction, "must be in (0, 1)"))
    test_ok = 0.0 <= test_fraction < 1.0
    if not test_ok:
        out.append(("test_fraction", test_fraction,
                    "must be in [0, 1); 0 holds out no test period"))
    elif val_ok and val_fraction + test_fraction >= 0.9:
        out.append(("test_fraction", test_fraction,
                    "val_fraction + test_fraction must stay below 0.9 (at least 10 % of the "
                    "dates train)"))
    if lag not in (0, 1):
        out.append(("execution_lag", lag,
                    "must be 0 (trade at the close of t) or 1 (from t + 1)"))
    if horizon is not None and horizon < 0:
        out.append(("horizon", horizon, "must be >= 0"))
    elif horizon is not None and purge is not None and isinstance(lag, int) \
            and purge < horizon + lag:
        out.append(("purge", purge, f"must be >= the longest label horizon plus the execution "
                                    f"lag ({horizon} + {lag} dates), or training labels "
                                    "overlap validation dates"))
    return out


@dataclass(frozen=True)
class Fold:
    """One fold: the dates its model trains on and the block it is validated on."""

    train: np.ndarray  # (n,) int64 ascending
    val: np.ndarray  # (m,) int64 ascending, consecutive

    def ranges(self, dates: np.ndarray) -> dict[str, list[str]]:
        """``{"train": [first, last], "validation": [first, last]}`` as ISO dates."""
        return {"train": [str(dates[self.train[0]]), str(dates[self.train[-1]])],
                "validation": [str(dates[self.val[0]]), str(dates[self.val[-1]])]}


def walk_forward_folds(*, val_end: int, folds: int, purge: int, window: str = "expanding",
                       val_start: int | None = None) -> tuple[Fold, ...]:
    """The K folds over the pre-test dates ``0..val_end`` (module docstring).

    A panel too short for them is a UserError naming the counts and what to change.
    """
    if folds < 2:
        raise UserError(f"cv_folds = {folds}: walk-forward needs at least 2 folds "
                        "(cv = \"holdout\" is one validation block)")
    if window not in CV_WINDOWS:
        raise UserError(f"cv_window = {window!r}; allowed: {', '.join(CV_WINDOWS)}")
    n = val_end + 1
    if val_start is not None:
        first = val_start
    else:
        first = n - folds * (n // (folds + 1))
    region = np.arange(first, n, dtype=np.int64)
    if len(region) < folds or first - purge < 1:
        raise UserError(
            f"the {n} pre-test dates are too few for {folds} walk-forward folds with purge "
            f"{purge}: {len(region)} validation dates and {max(0, first - purge)} training "
            "dates before the first block; use more dates, fewer cv_folds or an earlier "
            "val_start")
    blocks = np.array_split(region, folds)
    width = int(blocks[0][0]) - purge  # fold 1's training dates
    out = []
    for block in blocks:
        end = int(block[0]) - purge  # the first date a training label could reach the block
        start = 0 if window == "expanding" else end - width
        out.append(Fold(train=np.arange(start, end, dtype=np.int64), val=block))
    return tuple(out)
