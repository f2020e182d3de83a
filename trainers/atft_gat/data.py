"""The feature cache as a dense (dates, stocks) panel, its standardisation and its date split.

The model reads one date's cross-section with a lookback window of history, and the graph
links stocks by index, so a dense ``(D, S, ...)`` layout with a presence mask is simpler and
faster than the cache's ragged rows: a window is one slice plus one gather.

Presence: a (date, stock) row is *present* when it exists in the cache and all its features are
valid (the cache's ``feature_valid`` under ``nan_policy="mask"``). A missing *target* never
removes a row: deciding who is in the panel at date t from whether its future return is known
would be look-ahead. Missing targets read NaN (``target_valid``), features of absent rows 0.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch

from trainers.errors import UserError

# Dates standardised per pass: bounds the temporary copy to a few MB at 4,000 stocks.
STANDARDISE_CHUNK = 64
# A feature whose training spread is below this is constant: it is centred, not scaled.
MIN_STD = 1e-12


class FeatureCacheLike(Protocol):
    """The attributes of ``cache.FeatureCache`` that this module reads."""

    features: np.ndarray  # (rows, F) float32
    targets: np.ndarray  # (rows, H) float32
    valid: np.ndarray | None  # (rows,) bool
    date_index: np.ndarray  # (rows,) int32
    code_index: np.ndarray  # (rows,) int32
    unique_dates: np.ndarray  # (D,) datetime64[D]
    codes: list[str]
    feature_names: tuple[str, ...]
    target_names: tuple[str, ...]


@dataclass(frozen=True)
class Panel:
    """A dense panel; D dates, S stocks (codes), F features, H target horizons.

    ``feature_mean`` / ``feature_std`` are None on a raw panel and the (F,) statistics that
    :func:`standardise` used on a standardised one (saved with a model so that new data can be
    scaled the same way).
    """

    x: torch.Tensor  # (D, S, F) float32, 0 where absent
    y: torch.Tensor  # (D, S, H) float32, NaN where absent
    present: torch.Tensor  # (D, S) bool
    dates: np.ndarray  # (D,) datetime64[D]
    codes: list[str]  # (S,)
    feature_names: tuple[str, ...]
    target_names: tuple[str, ...]
    feature_mean: torch.Tensor | None = None
    feature_std: torch.Tensor | None = None

    def window(self, d: int, lookback: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of the stocks present at date ``d`` over dates ``[d - lookback + 1, d]``.

        Returns ``(x, idx)``: ``x`` is a contiguous ``(n, lookback, F)`` tensor (oldest date
        first) made by a single gather, and ``idx`` the ``(n,)`` int64 stock indices, ascending.
        A stock present at d but absent earlier in the window reads 0 on those dates (see
        ``present`` for where).
        """
        n_dates = self.x.shape[0]
        if not 0 <= d < n_dates:
            raise IndexError(f"date index {d} out of range for {n_dates} dates")
        if lookback < 1 or d - lookback + 1 < 0:
            raise ValueError(
                f"date index {d} has {d} earlier dates, a lookback of {lookback} needs "
                f"{lookback - 1}; start at date index >= lookback - 1"
            )
        idx = self.present[d].nonzero().squeeze(1)  # (n,)
        history = self.x[d - lookback + 1 : d + 1]  # (L, S, F) view, no copy
        return history.permute(1, 0, 2)[idx], idx  # (n, L, F): the one copy

    def head(self, n: int) -> Panel:
        """The first ``n`` dates only (views, no copy): what a trial may read."""
        return replace(self, x=self.x[:n], y=self.y[:n], present=self.present[:n],
                       dates=self.dates[:n])

    def lagged(self, lag: int) -> Panel:
        """Targets moved ``lag`` dates earlier: the label of date t becomes the return that
        starts ``lag`` dates after t (features of t computed at its close, traded from the
        next date). The last ``lag`` dates get no label."""
        if lag == 0:
            return self
        y = torch.full_like(self.y, float("nan"))
        y[:-lag] = self.y[lag:]
        return replace(self, y=y)


def dense_panel(fc: FeatureCacheLike) -> Panel:
    """Scatter the cache's rows into a dense panel (one copy of features and targets)."""
    n_dates, n_stocks = len(fc.unique_dates), len(fc.codes)
    features = np.asarray(fc.features)
    targets = np.asarray(fc.targets)
    n_features, n_targets = features.shape[1], targets.shape[1]
    flat = np.asarray(fc.date_index, dtype=np.int64) * n_stocks + np.asarray(
        fc.code_index, dtype=np.int64
    )  # (rows,) cell of each row
    if len(flat) and np.bincount(flat, minlength=n_dates * n_stocks).max() > 1:
        raise UserError("the feature cache holds a (date, code) pair twice; rebuild it")
    ok = np.isfinite(features).all(axis=1)
    feature_valid = getattr(fc, "feature_valid", None)
    if feature_valid is not None:
        ok &= np.asarray(feature_valid, dtype=bool)
    elif fc.valid is not None:  # an older cache: the row mask is all we have
        ok &= np.asarray(fc.valid, dtype=bool)
    target_valid = getattr(fc, "target_valid", None)
    if target_valid is not None:  # the cache stores bad targets as 0 under "mask"
        targets = np.where(np.asarray(target_valid, dtype=bool), targets, np.nan)
    cells = torch.from_numpy(flat[ok])

    # Boolean indexing copies the rows into fresh writable arrays, the only copy made.
    x = torch.zeros(n_dates * n_stocks, n_features, dtype=torch.float32)
    x[cells] = torch.from_numpy(features[ok].astype(np.float32, copy=False))
    y = torch.full((n_dates * n_stocks, n_targets), float("nan"), dtype=torch.float32)
    y[cells] = torch.from_numpy(targets[ok].astype(np.float32, copy=False))
    present = torch.zeros(n_dates * n_stocks, dtype=torch.bool)
    present[cells] = True
    return Panel(
        x=x.view(n_dates, n_stocks, n_features),
        y=y.view(n_dates, n_stocks, n_targets),
        present=present.view(n_dates, n_stocks),
        dates=np.asarray(fc.unique_dates).astype("datetime64[D]"),
        codes=list(fc.codes),
        feature_names=tuple(fc.feature_names),
        target_names=tuple(fc.target_names),
    )


def standardise(panel: Panel, train_dates: np.ndarray) -> Panel:
    """A new panel whose features are z-scored with statistics of the training dates only.

    Mean and standard deviation are per feature, pooled over the present rows of
    ``train_dates`` (date indices), so nothing about validation dates leaks into the scaling.
    Every date is then scaled with them; absent rows stay 0. A feature constant over the
    training rows is centred only. The input panel is left untouched.
    """
    train_dates = np.asarray(train_dates, dtype=np.int64)
    if len(train_dates) == 0:
        raise ValueError("standardise needs at least one training date")
    n_features = panel.x.shape[2]
    total = torch.zeros(n_features, dtype=torch.float64)
    count = 0
    chunks = [
        torch.from_numpy(train_dates[i : i + STANDARDISE_CHUNK])
        for i in range(0, len(train_dates), STANDARDISE_CHUNK)
    ]
    for chunk in chunks:
        rows = panel.x[chunk][panel.present[chunk]].double()  # (n, F)
        total += rows.sum(0)
        count += rows.shape[0]
    if count == 0:
        raise UserError("no stock is present on any training date; nothing to standardise on")
    mean = total / count
    # Second pass about the mean: no cancellation, unlike sum of squares minus squared sum.
    square = torch.zeros(n_features, dtype=torch.float64)
    for chunk in chunks:
        rows = panel.x[chunk][panel.present[chunk]].double()
        square += (rows - mean).square().sum(0)
    std = (square / count).sqrt()
    std = torch.where(std > MIN_STD, std, torch.ones_like(std))
    mean32, std32 = mean.float(), std.float()
    x = (panel.x - mean32).div_(std32).mul_(panel.present.unsqueeze(-1))  # (D, S, F)
    return replace(panel, x=x, feature_mean=mean32, feature_std=std32)


@dataclass(frozen=True)
class DateSplit:
    """The study's calendar split, identical for every trial whatever it samples.

    Layout over the panel's date indices ``0..D-1``::

        [ train ..................][purge][ validation ][purge][ test ][ span ]

    ``span = horizon + lag`` is how many dates after t the label of date t reaches (the label
    of t is the ``horizon``-day return that starts ``lag`` dates after t). With ``purge >=
    span`` no training label reaches a validation date and no validation label reaches a test
    date. The boundaries depend only on the panel's length and the data settings, never on a
    trial's ``lookback`` or batch, so every trial of a study is scored on the same dates.
    ``train`` starts at date 0; a trial drops its first ``lookback - 1`` dates itself (they
    lack a full window of history) without moving any boundary.

    ``read_until`` is the last date index a trial may read at all (features, targets,
    returns for the graph): the last validation date plus ``lag`` (its label row). Everything
    after it, the test period included, exists only for ``hpo.evaluate``.
    """

    train: np.ndarray  # (n_train,) int64 date indices, ascending
    val: np.ndarray  # (n_val,) int64
    test: np.ndarray  # (n_test,) int64, empty when test_fraction is 0
    purge: int
    horizon: int
    lag: int

    @property
    def span(self) -> int:
        return self.horizon + self.lag

    @property
    def read_until(self) -> int:
        return int(self.val[-1]) + self.lag

    def ranges(self, dates: np.ndarray) -> dict[str, list[str] | int]:
        """First and last calendar date of each part (for attrs and reports)."""
        out: dict[str, list[str] | int] = {}
        for name in ("train", "val", "test"):
            part = getattr(self, name)
            if len(part):
                out[name] = [str(dates[part[0]]), str(dates[part[-1]])]
        out.update(purge=self.purge, horizon=self.horizon, lag=self.lag)
        return out


def date_split(n_dates: int, *, val_fraction: float, test_fraction: float, purge: int,
               horizon: int, lag: int = 0) -> DateSplit:
    """Train / purge / validation / purge / test date indices (see :class:`DateSplit`).

    The last ``horizon + lag`` dates have no label inside the sample and belong to no part.
    Of the ``usable`` dates before them, the test period takes the last
    ``round(test_fraction * usable)`` (none when ``test_fraction`` is 0), validation the
    ``max(1, round(val_fraction * usable))`` before the second purge gap, and training
    everything before the first. Every problem with the settings is reported at once; a
    panel too short for them is a UserError naming the counts.
    """
    problems = []
    if not 0.0 < val_fraction < 1.0:
        problems.append(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not 0.0 <= test_fraction < 1.0:
        problems.append(f"test_fraction must be in [0, 1), got {test_fraction}")
    elif val_fraction + test_fraction >= 0.9:
        problems.append(f"val_fraction + test_fraction = {val_fraction + test_fraction:g} "
                        "leaves under 10 % of the dates for training")
    if horizon < 0:
        problems.append(f"horizon must be >= 0, got {horizon}")
    if lag not in (0, 1):
        problems.append(f"execution_lag must be 0 or 1, got {lag}")
    if purge < horizon + lag:
        problems.append(
            f"purge={purge} must be >= the longest label horizon plus the execution lag "
            f"({horizon} + {lag} dates), or training labels overlap validation dates")
    if problems:
        raise UserError("; ".join(problems))
    last = n_dates - 1 - horizon - lag  # the last date whose label lies inside the sample
    usable = last + 1
    n_test = round(test_fraction * usable) if test_fraction > 0 else 0
    if test_fraction > 0:
        n_test = max(1, n_test)
    n_val = max(1, round(val_fraction * usable))
    test = np.arange(last - n_test + 1, last + 1, dtype=np.int64)
    val_end = last - n_test - (purge if n_test else 0)
    val = np.arange(val_end - n_val + 1, val_end + 1, dtype=np.int64)
    train = np.arange(0, val[0] - purge if len(val) else 0, dtype=np.int64)
    if len(train) < 1 or val[0] < 0:
        raise UserError(
            f"the panel's {n_dates} dates are too few for val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}, purge={purge} and a {horizon}-date horizon with "
            f"lag {lag}: {max(0, len(train))} training dates are left; use more dates or "
            "smaller settings")
    return DateSplit(train=train, val=val, test=test, purge=purge, horizon=horizon, lag=lag)
