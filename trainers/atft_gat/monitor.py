"""The morning after: ATFT-GAT-FAN's model and baselines on the dates after the test period.

``live(trained, source, cache_dir, split)`` is the workload's ``HeldOut.live`` capability
(``hpo.monitor`` calls it). On the user's panel (the study's schema, grown with new dates):

1. the model scores every date after the study's last test date (``score_panel``: the
   training pipeline, the saved training statistics), keeping the dates whose scored-horizon
   return, after the execution lag, is realised;
2. the best single feature and the ridge fit are fitted as the test report fits them (on the
   study's training dates of its own panel, the penalty chosen on its validation dates; the
   last fold's for a walk-forward study), read from the recorded date split, so a grown panel
   file moves nothing, and they score the same rows;
3. each series becomes per-date figures through the study's book (RankIC, long-short gross
   and net of the study's cost, turnover), the book run from the first date after the test
   period so that its turnover chain is the same every morning.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from trainers.errors import UserError


def _dates_in(dates: np.ndarray, first: str, last: str) -> np.ndarray:
    days = np.asarray(dates).astype("datetime64[D]")
    return np.flatnonzero((days >= np.datetime64(first, "D")) & (days <= np.datetime64(last, "D")))


def fit_periods(split: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The (train, validation) [first, last] ISO ranges the report's baselines were fitted on:
    the last fold's for a walk-forward study."""
    folds = split.get("folds") or []
    part = folds[-1] if folds else split
    return list(part["train"]), list(part["val"])


def _fitted(trained: Any, cache_dir: Path, split: Mapping[str, Any]) -> dict[str, Any]:
    """The baselines fitted on the study's own panel (``panel_baselines``)."""
    from trainers.atft_gat.data import cache_panel
    from trainers.atft_gat.train import load_features
    from trainers.baselines import PanelView, panel_baselines

    config = trained.config
    fc = load_features(config, Path(cache_dir))
    panel = cache_panel(fc).lagged(config.execution_lag)
    h = list(config.horizons).index(config.metric_horizon)
    view = PanelView(x=panel.x, y=panel.y[:, :, h], present=panel.present, dates=panel.dates,
                     codes=panel.codes, feature_names=panel.feature_names)
    train, val = fit_periods(split)
    return panel_baselines(view, {"validation": _dates_in(panel.dates, *val)},
                           train_dates=_dates_in(panel.dates, *train))


def live(trained: Any, source: str, cache_dir: Path, split: Mapping[str, Any],
         validation: Any, s: Mapping[str, Any]) -> dict[str, Any]:
    """Per-date figures of the model and the baselines after the test period (module
    docstring), and of the trial's ``validation`` rows: ``{"after", "series": {name: frame},
    "labels": {name: label}, "validation": frame, "periods_per_year", "horizon",
    "cost_bps"}``, each frame ``date, rank_ic, long_short, long_short_net, turnover``; ``s``:
    how the study scores a period (``heldout.scoring``)."""
    from trainers.atft_gat.scoring import score_panel
    from trainers.baselines import PanelView, baseline_frames

    if trained.config.source == "synthetic":
        raise UserError("the study ran on the synthetic market: hpo.monitor scores a panel "
                        "file that grows with new dates; run a study on your panel first")
    end = split.get("test", split.get("val"))[1]
    first = (date.fromisoformat(end) + timedelta(days=1)).isoformat()
    try:
        scored = score_panel(trained, source, dates=f"{first}:", cache_dir=Path(cache_dir),
                             with_target=True)
    except UserError as exc:
        if "selects none of the panel's dates" in str(exc):
            raise UserError(f"panel {source} has no date after the study's test period (it "
                            f"ends {end}); append the new dates' rows and run again") from None
        raise
    rows = scored.frame.rename({"score": "pred"})
    panel = scored.panel
    h = list(trained.config.horizons).index(trained.config.metric_horizon)
    view = PanelView(x=panel.x, y=panel.y[:, :, h], present=panel.present, dates=panel.dates,
                     codes=panel.codes, feature_names=panel.feature_names)
    fitted = _fitted(trained, cache_dir, split)
    frames = {"model": rows.filter(pl.col("target").is_finite()),
              **baseline_frames(view, scored.wanted, fitted["predictors"])}
    best = fitted["best_feature"]["feature"]
    return {"after": end,
            "series": {name: days(frame, s) for name, frame in frames.items()},
            "labels": {"model": "model", "best_feature": f"best feature ({best})",
                       "linear": "ridge (every feature)"},
            "validation": days(validation, s), "periods_per_year": s["periods_per_year"],
            "horizon": s["horizon"], "cost_bps": s["cost_bps"]}


def days(rows: Any, s: Mapping[str, Any]) -> Any:
    """Per-date figures of ``date, code, pred, target`` rows through the study's book
    (``scoring``'s horizon, cost and book)."""
    from trainers.metrics import per_date_metrics

    rows = rows.sort("date", "code")
    return per_date_metrics(rows["date"].to_numpy(), rows["pred"].to_numpy(),
                            rows["target"].to_numpy(), codes=rows["code"].to_numpy(),
                            horizon=s["horizon"], cost_bps=s["cost_bps"], book=s["book"]
                            ).select("date", "rank_ic", "long_short", "long_short_net",
                                     "turnover")
