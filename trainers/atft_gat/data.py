"""The feature cache as a (dates, stocks) panel, standardised per batch, and the date split.

The model reads one date's cross-section with a lookback window of history, and the graph
links stocks by index, so the panel is the cache's own ``(D, S, F)`` memory-mapped block: a
window is one slice plus one gather, and nothing is densified, copied or standardised in
advance. Training holds the panel once in the page cache (shared by every worker on the host)
and copies only the windows of the batch in hand.

Presence: a (date, stock) row is *present* when it exists in the source. Missing values are
handled per value, never per row: a NaN feature does not remove the stock-day. Each window is
standardised with the training dates' statistics and a missing value then reads 0, the training
mean (with ``missing_indicator`` the model also gets one 0/1 channel per feature saying which
values were imputed). Only a missing *target* takes a row out of the loss and the metrics;
deciding who is in the panel at date t from whether its future return is known would be
look-ahead. Targets are never filled.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch

from trainers.atft_gat.folds import CV, Fold, split_problems, walk_forward_folds
from trainers.errors import UserError

# A feature whose training spread is below this is constant: it is centred, not scaled.
MIN_STD = 1e-12


class FeatureCacheLike(Protocol):
    """The attributes of ``cache.FeatureCache`` that this module reads."""

    features: np.ndarray  # (D, S, F) float32, NaN = missing
    targets: np.ndarray  # (D, S, H) float32, NaN = missing
    present: np.ndarray  # (D, S) bool
    dates: np.ndarray  # (D,) datetime64[D]
    codes: list[str]
    feature_names: tuple[str, ...]
    target_names: tuple[str, ...]

    def features_torch(self) -> torch.Tensor: ...  # (D, S, F) sharing ``features``' memory

    def targets_torch(self) -> torch.Tensor: ...  # (D, S, H)


@dataclass(frozen=True)
class Panel:
    """A panel of D dates, S stocks (codes), F features, H target horizons.

    ``x`` holds the raw values (a view onto the cache's pages when it comes from one); the
    statistics that :meth:`window` standardises with are ``feature_mean`` / ``feature_std``
    ((F,) float32, None on a raw panel). They are saved with a model so that new data can be
    scaled the same way.
    """

    x: torch.Tensor  # (D, S, F) float32, NaN where missing or absent
    y: torch.Tensor  # (D, S, H) float32, NaN where absent or unknown
    present: torch.Tensor  # (D, S) bool
    dates: np.ndarray  # (D,) datetime64[D]
    codes: list[str]  # (S,)
    feature_names: tuple[str, ...]
    target_names: tuple[str, ...]
    feature_mean: torch.Tensor | None = None
    feature_std: torch.Tensor | None = None
    missing_indicator: bool = False

    @property
    def n_inputs(self) -> int:
        """Input channels the model gets per date: features (+ their missing indicators)."""
        return len(self.feature_names) * (2 if self.missing_indicator else 1)

    def window(self, d: int, lookback: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs of the stocks present at date ``d`` over dates ``[d - lookback + 1, d]``.

        Returns ``(x, idx)``: ``x`` is a contiguous ``(n, lookback, n_inputs)`` float32 tensor
        (oldest date first), standardised when the panel has statistics, with every missing or
        absent value at 0; ``idx`` the ``(n,)`` int64 stock indices, ascending. A stock present
        at d but absent earlier in the window reads 0 (and "missing") on those dates.
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
        history = self.x[d - lookback + 1 : d + 1]  # (L, S, F) view of the map, no copy
        x = history.permute(1, 0, 2)[idx]  # (n, L, F): the one copy
        if self.feature_mean is not None:
            x = x.sub_(self.feature_mean).div_(self.feature_std)
        missing = torch.isnan(x)
        x = x.masked_fill_(missing, 0.0)
        if self.missing_indicator:
            x = torch.cat([x, missing.to(x.dtype)], dim=-1)  # (n, L, 2F)
        return x, idx

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


def cache_panel(fc: FeatureCacheLike, *, missing_indicator: bool = False) -> Panel:
    """The cache's arrays as a panel, without a copy (the tensors share the mapped pages;
    nothing here writes to them: windows are copies)."""
    return Panel(
        x=fc.features_torch(),
        y=fc.targets_torch(),
        present=torch.from_numpy(np.array(fc.present, dtype=bool)),
        dates=np.asarray(fc.dates).astype("datetime64[D]"),
        codes=list(fc.codes),
        feature_names=tuple(fc.feature_names),
        target_names=tuple(fc.target_names),
        missing_indicator=missing_indicator,
    )


def standardise(panel: Panel, train_dates: np.ndarray, *,
                moments: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> Panel:
    """The panel with the z-scoring statistics of the training dates attached (no copy).

    Mean and standard deviation are per feature, pooled over the present finite values of
    ``train_dates`` (date indices), so nothing about later dates leaks into the scaling. The
    cache gives them exactly from its per-date statistics (``moments = fc.feature_moments(
    train_dates)``); without them they are computed here in one pass over those dates. A
    feature with no value on any training date is refused; one constant over them is
    centred only.
    """
    train_dates = np.asarray(train_dates, dtype=np.int64)
    if len(train_dates) == 0:
        raise ValueError("standardise needs at least one training date")
    if moments is None:
        moments = _moments(panel, train_dates)
    count, mean, std = moments
    empty = [n for n, c in zip(panel.feature_names, count, strict=True) if c == 0]
    if empty:
        raise UserError(f"feature(s) {', '.join(empty)} have no value on any of the "
                        f"{len(train_dates)} training dates; drop them from the feature list")
    std = np.where(std > MIN_STD, std, 1.0)
    return replace(panel, feature_mean=torch.as_tensor(mean, dtype=torch.float32),
                   feature_std=torch.as_tensor(std, dtype=torch.float32))


def _moments(panel: Panel, dates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_features = panel.x.shape[2]
    count = np.zeros(n_features)
    total = np.zeros(n_features)
    for d in dates:
        rows = panel.x[int(d)][panel.present[int(d)]].double().numpy()  # (n, F)
        ok = np.isfinite(rows)
        count += ok.sum(0)
        total += np.where(ok, rows, 0.0).sum(0)
    mean = total / np.maximum(count, 1)
    square = np.zeros(n_features)
    for d in dates:
        rows = panel.x[int(d)][panel.present[int(d)]].double().numpy()
        square += np.where(np.isfinite(rows), (rows - mean) ** 2, 0.0).sum(0)
    return count, mean, np.sqrt(square / np.maximum(count, 1))


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
    # Walk-forward validation (trainers.atft_gat.folds): its folds, whose blocks make up
    # ``val``; ``train`` is then the last fold's. Empty for a holdout split.
    folds: tuple[Fold, ...] = ()

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
        if self.folds:
            out["folds"] = [fold.ranges(dates) for fold in self.folds]
        return out


def start_index(dates: np.ndarray, start: str, *, name: str) -> int | None:
    """Index of the first panel date on or after the ISO date ``start`` ("" = None)."""
    if not start:
        return None
    day = np.datetime64(start, "D")
    days = np.asarray(dates).astype("datetime64[D]")
    if day < days[0] or day > days[-1]:
        raise UserError(f"{name} = {start!r} is outside the panel's dates ({days[0]} to "
                        f"{days[-1]}); choose a date inside them")
    return int(np.searchsorted(days, day))


def study_split(config: Any, dates: np.ndarray) -> DateSplit:
    """The study's split of a panel with calendar ``dates`` under ``config``'s data settings
    (fractions, or ``val_start`` / ``test_start`` dates): what training and prediction use."""
    val_start = start_index(dates, config.val_start, name="val_start")
    split = date_split(len(dates), val_fraction=config.val_fraction,
                       test_fraction=config.test_fraction, purge=config.purge,
                       horizon=max(config.horizons), lag=config.execution_lag,
                       val_start=val_start,
                       test_start=start_index(dates, config.test_start, name="test_start"))
    if config.cv is not CV.WALK_FORWARD:
        return split
    folds = walk_forward_folds(val_end=int(split.val[-1]), folds=config.cv_folds,
                               purge=config.purge, window=config.cv_window,
                               val_start=val_start)
    return replace(split, train=folds[-1].train,
                   val=np.concatenate([f.val for f in folds]), folds=folds)


def date_split(n_dates: int, *, val_fraction: float, test_fraction: float, purge: int,
               horizon: int, lag: int = 0, val_start: int | None = None,
               test_start: int | None = None) -> DateSplit:
    """Train / purge / validation / purge / test date indices (see :class:`DateSplit`).

    The last ``horizon + lag`` dates have no label inside the sample and belong to no part.
    Of the ``usable`` dates before them, the test period takes the last
    ``round(test_fraction * usable)`` (none when ``test_fraction`` is 0), validation the
    ``max(1, round(val_fraction * usable))`` before the second purge gap, and training
    everything before the first. ``test_start`` / ``val_start`` (date indices) replace the
    fractions: the test period then runs from ``test_start`` to the last usable date, and
    validation from ``val_start`` to the second purge gap. Every problem with the settings is
    reported at once; a panel too short for them is a UserError naming the counts.
    """
    problems = split_problems(val_fraction=val_fraction, test_fraction=test_fraction,
                              horizon=horizon, lag=lag, purge=purge)
    if problems:
        raise UserError("; ".join(f"{name}={value!r}: {rule}" for name, value, rule in problems))
    last = n_dates - 1 - horizon - lag  # the last date whose label lies inside the sample
    usable = last + 1
    if test_start is not None:
        n_test = last - test_start + 1
        if n_test < 1:
            raise UserError(f"test_start is date {test_start + 1} of {n_dates}, after the last "
                            f"date with a {horizon}-date label (date {usable}); choose an "
                            "earlier test_start")
    else:
        n_test = round(test_fraction * usable) if test_fraction > 0 else 0
        if test_fraction > 0:
            n_test = max(1, n_test)
    test = np.arange(last - n_test + 1, last + 1, dtype=np.int64)
    val_end = last - n_test - (purge if n_test else 0)
    if val_start is not None:
        if val_start > val_end:
            raise UserError(f"val_start is date {val_start + 1} of {n_dates}, but validation "
                            f"must end at date {val_end + 1} ({purge} purge dates before the "
                            "test period); choose an earlier val_start")
        n_val = val_end - val_start + 1
    else:
        n_val = max(1, round(val_fraction * usable))
    val = np.arange(val_end - n_val + 1, val_end + 1, dtype=np.int64)
    train = np.arange(0, val[0] - purge if len(val) else 0, dtype=np.int64)
    if len(train) < 1 or val[0] < 0:
        raise UserError(
            f"the panel's {n_dates} dates are too few for val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}, purge={purge} and a {horizon}-date horizon with "
            f"lag {lag}: {max(0, len(train))} training dates are left; use more dates or "
            "smaller settings")
    return DateSplit(train=train, val=val, test=test, purge=purge, horizon=horizon, lag=lag)
