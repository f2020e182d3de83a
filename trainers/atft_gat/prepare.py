"""What the ATFT-GAT recipe prepares before its first step: the cached features, the leakage
scores, the selection dates carved off the training period and the z-scored targets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cache import CacheSpec, FeatureCache, load_or_build
from trainers.atft_gat.config import TrainConfig
from trainers.atft_gat.data import DateSplit, Panel
from trainers.atft_gat.graph import DateGraphs
from trainers.atft_gat.leakage import SIDECAR, GuardScores, guard_dates, guard_scores
from trainers.errors import UserError

# Below this share of the source's labelled rows reaching the loss, the data is unusable.
MIN_ROWS_KEPT = 0.5
# Per-date z-scoring of targets needs a few stocks to estimate a spread.
MIN_STOCKS_FOR_ZSCORE = 3


@dataclass(frozen=True)
class Inputs:
    """What the loop trains and scores on, prepared once per trial (``train.prepare_inputs``).

    Date fields are (n,) int64 indices into ``panel.dates``, ascending.
    """

    fc: FeatureCache
    split: DateSplit  # the study's date split, the same for every trial
    source_dates: np.ndarray  # every date of the source: the calendar of ``split``
    panel: Panel  # standardised, and cut after the last validation label
    y_z: torch.Tensor  # (D, S, H) per-date z-scored targets
    graphs: DateGraphs
    train_dates: np.ndarray  # the dates the loop fits on
    select_dates: np.ndarray  # pick the best epoch; empty without select_fraction
    val_dates: np.ndarray
    h_idx: int  # index of metric_horizon in the horizons
    graph_seconds: float  # building or reading the graphs

    @property
    def used_dates(self) -> np.ndarray:
        """Every date the trial trains, selects or scores on."""
        return np.concatenate([self.train_dates, self.select_dates, self.val_dates])


@dataclass
class StudyPanel:
    """What every model of a trial shares (``train.load_study_panel``): the panel cut after
    the last validation label, lagged and unstandardised, the split, the graphs."""

    fc: FeatureCache
    split: DateSplit
    source_dates: np.ndarray
    panel: Panel
    graphs: DateGraphs
    graph_seconds: float
    h_idx: int


def cache_source(config: TrainConfig) -> str:
    if config.source == "synthetic":
        return (f"synthetic:n_stocks={config.n_stocks},n_dates={config.n_dates},"
                f"seed={config.market_seed},difficulty={config.market_difficulty}")
    return config.source


def cache_spec(config: TrainConfig) -> CacheSpec:
    """The cache spec of the study's panel: its features, one target per horizon, the NaN
    policy and the panel's names of the key columns."""
    keys = ({"date_column": config.date_column, "code_column": config.code_column}
            if config.source != "synthetic" else {})
    return CacheSpec(feature_columns=config.features or None,
                     target_columns=tuple(f"ret_{h}d" for h in config.horizons),
                     nan_policy=config.nan_policy, **keys)


def load_features(config: TrainConfig, cache_dir: Path) -> FeatureCache:
    return load_or_build(cache_source(config), Path(config.cache_dir or cache_dir),
                         cache_spec(config))


def leak_scores(fc: FeatureCache, panel: Panel, train_dates: np.ndarray,
                config: TrainConfig) -> GuardScores:
    """The leakage guard's figures (``trainers.atft_gat.leakage``) on (a sample of) the
    training dates: every feature against every target, and the timing test on the shortest
    horizon; from the cache's sidecar when an earlier trial measured them."""
    dates = guard_dates(train_dates, n_stocks=panel.x.shape[1])
    targets = tuple(panel.target_names)
    timing = int(np.argmin(config.horizons))
    params = {"guard": 4, "periods_per_year": config.periods_per_year,
              "targets": list(targets), "timing": targets[timing],
              "lag": config.execution_lag, "dates": [str(panel.dates[d]) for d in dates]}
    stored = fc.load_sidecar(SIDECAR, params=params)
    if stored is None:
        scores = guard_scores(panel.x, panel.y, panel.present, dates,
                              features=tuple(panel.feature_names), targets=targets,
                              horizons=tuple(config.horizons), timing_index=timing,
                              periods_per_year=config.periods_per_year or 252.0)
        fc.save_sidecar(SIDECAR, scores.to_arrays(), params=params)
        return scores
    return GuardScores(features=tuple(panel.feature_names), targets=targets,
                       timing_target=targets[timing], **stored)


def no_graphs(n_dates: int) -> DateGraphs:
    """An edgeless graph of ``n_dates`` dates (for models without the graph block)."""
    empty = np.zeros(0, dtype=np.int32)
    return DateGraphs(src=empty, dst=empty, weight=np.zeros(0, dtype=np.float32),
                      offsets=np.zeros(n_dates + 1, dtype=np.int64))


def carve_selection(train_dates: np.ndarray, config: TrainConfig
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Split the last ``select_fraction`` of the training dates off for model selection.

    Layout: [fit dates][purge gap][selection dates][purge gap][validation dates]. The gap keeps
    every fit label window out of the selection period, as the outer gap does for validation.
    """
    empty = np.zeros(0, dtype=np.int64)
    if config.select_fraction <= 0:
        return train_dates, empty
    n_select = max(1, int(round(len(train_dates) * config.select_fraction)))
    select = train_dates[-n_select:]
    fit = train_dates[train_dates < select[0] - config.purge]
    if len(fit) == 0:
        raise UserError(f"select_fraction={config.select_fraction} with purge {config.purge} "
                        f"leaves no training dates out of {len(train_dates)}; use more dates or "
                        "a smaller select_fraction")
    return fit, select


def zscore_targets(y: torch.Tensor) -> torch.Tensor:
    """Cross-sectional z-score per (date, horizon); NaN stays NaN. y: (D, S, H)."""
    valid = torch.isfinite(y)
    n = valid.sum(dim=1, keepdim=True).clamp_min(1)
    filled = torch.where(valid, y, 0.0)
    mean = filled.sum(dim=1, keepdim=True) / n
    var = (torch.where(valid, y - mean, 0.0) ** 2).sum(dim=1, keepdim=True) / n
    z = (y - mean) / var.sqrt().clamp_min(1e-12)
    few = valid.sum(dim=1, keepdim=True) < MIN_STOCKS_FOR_ZSCORE
    return torch.where(few, torch.full_like(z, float("nan")), z)


def coverage(fc: FeatureCache, panel: Panel, dates: np.ndarray, h_idx: int, *, lag: int
             ) -> dict[str, Any]:
    """How much of the data on ``dates`` reaches the model, as trial attrs; a UserError when
    fewer than half of the labelled rows do.

    ``rows_kept_fraction``: labelled rows (present, scored target known) that enter the loss
    and the metrics, over all labelled rows; missing features never remove a row, so anything
    below 1 means rows were lost. ``values_missing_fraction``: feature values of present rows
    that were missing and imputed.
    """
    dates = np.unique(np.asarray(dates, dtype=np.int64))
    idx = torch.as_tensor(dates)
    labelled = panel.present[idx] & torch.isfinite(panel.y[idx, :, h_idx])  # (n, S)
    # The same count straight from the cache (the label of d sits lag dates later there).
    source_rows = int((torch.from_numpy(np.array(fc.present))[idx]
                       & torch.isfinite(fc.targets_torch()[idx + lag, :, h_idx])).sum())
    kept = int(labelled.sum()) / max(1, source_rows)
    present = fc.stats["present"][dates].astype(np.int64)  # (n,)
    counted = fc.stats["count"][dates].astype(np.int64)  # (n, F) present finite values
    n_values = int(present.sum()) * len(panel.feature_names)
    missing = 1.0 - counted.sum() / max(1, n_values)
    if kept < MIN_ROWS_KEPT:
        raise UserError(f"only {kept:.0%} of the {source_rows} labelled rows on the trial's "
                        f"dates reach the model (minimum {MIN_ROWS_KEPT:.0%}); check the "
                        "panel's presence and target columns")
    return {"rows_kept_fraction": round(kept, 6), "values_missing_fraction": round(missing, 6)}


# The synthetic market's annualisation: its calendar is every business day (261 a year), but
# its figures are calibrated, and have always been quoted, at 252 trading days.
SYNTHETIC_PERIODS_PER_YEAR = 252.0


def with_calendar(config: TrainConfig, dates: np.ndarray) -> TrainConfig:
    """``config`` with ``periods_per_year`` resolved: as set, else the panel's calendar
    (``calendar_periods_per_year`` of its ``dates``), else 252 for the synthetic market."""
    if config.periods_per_year:
        return config
    from trainers.metrics import calendar_periods_per_year

    ppy = (SYNTHETIC_PERIODS_PER_YEAR if config.source == "synthetic"
           else calendar_periods_per_year(dates))
    return dataclasses.replace(config, periods_per_year=ppy)
