"""The morning after: ATFT-GAT-FAN's model and baselines on the dates after the test period.

``live(trained, source, cache_dir, split)`` is the workload's ``HeldOut.live`` capability
(``hpo.monitor`` calls it). On the user's panel (the study's schema, grown with new dates):

1. the model scores every date after the study's last test date (``score_panel``: the
   training pipeline, the saved training statistics), keeping the dates whose scored-horizon
   return, after the execution lag, is realised;
2. the best single feature and the ridge fit are fitted as the test report fits them (on the
   study's training dates of its own panel, the penalty chosen on its validation dates; the
   last fold's for a walk-forward study), read from the recorded date split, so a grown panel
   file moves nothing, and they score the same rows; the blend of the model and ridge
   (equal per-date z-weights, what ``hpo.predict --blend`` trades) is a series too;
3. each series becomes per-date figures through the study's book (RankIC, long-short gross
   and net of the study's cost, turnover), the book run from the first date after the test
   period so that its turnover chain is the same every morning.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from trainers.errors import UserError
from trainers.metrics.scoring import Scoring

SCORES = "scores.parquet"  # every scored live row: series, date, code, pred, target
BASELINES = "baselines.npz"  # the fitted baselines and what they were fitted on


def _dates_in(dates: np.ndarray, first: str, last: str) -> np.ndarray:
    days = np.asarray(dates).astype("datetime64[D]")
    return np.flatnonzero((days >= np.datetime64(first, "D")) & (days <= np.datetime64(last, "D")))


def fit_periods(split: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The (train, validation) [first, last] ISO ranges the report's baselines were fitted on:
    the last fold's for a walk-forward study."""
    folds = split.get("folds") or []
    part = folds[-1] if folds else split
    return list(part["train"]), list(part["val"])


def fitted_baselines(trained: Any, cache_dir: Path, split: Mapping[str, Any],
                     state: Path | None) -> Any:
    """The baselines fitted on the study's own panel (``panel_baselines``), kept in
    ``state`` and reused while the model's panel, features and fit periods are the same."""
    import json

    from trainers.atft_gat.data import cache_panel
    from trainers.atft_gat.train import load_features
    from trainers.baselines import Fitted, PanelView, panel_baselines
    from trainers.context import atomic_write_bytes

    config = trained.config
    train, val = fit_periods(split)
    key = json.dumps({"source": config.source, "features": list(trained.feature_names),
                      "horizon": config.metric_horizon, "lag": config.execution_lag,
                      "train": train, "val": val}, sort_keys=True)
    path = state / BASELINES if state is not None else None
    if path is not None and path.is_file():
        kept = Fitted.load(path, key)
        if kept is not None:
            return kept
    fc = load_features(config, Path(cache_dir))
    panel = cache_panel(fc).lagged(config.execution_lag)
    h = list(config.horizons).index(config.metric_horizon)
    view = PanelView(x=panel.x, y=panel.y[:, :, h], present=panel.present, dates=panel.dates,
                     codes=panel.codes, feature_names=panel.feature_names)
    fitted = panel_baselines(view, {"validation": _dates_in(panel.dates, *val)},
                             train_dates=_dates_in(panel.dates, *train))["fitted"]
    if path is not None:
        atomic_write_bytes(path, fitted.to_bytes(key), durable=False)
    return fitted


def _known(state: Path | None) -> pl.DataFrame | None:
    path = state / SCORES if state is not None else None
    if path is None or not path.is_file():
        return None
    return pl.read_parquet(path)


def live(trained: Any, source: str, cache_dir: Path, split: Mapping[str, Any],
         validation: Any, s: Scoring, state: Path | None = None) -> dict[str, Any]:
    """Per-date figures of the model and the baselines after the test period (module
    docstring), and of the trial's ``validation`` rows: ``{"after", "series": {name: frame},
    "labels": {name: label}, "validation": frame, "periods_per_year", "horizon", "cost_bps",
    "scored_dates"}`` (the dates the model scored in this run), each frame ``date, rank_ic,
    long_short, long_short_net, turnover``; ``s``: how the study scores a period
    (the config's ``scoring``). ``state``: a folder kept between runs, where the scored rows and
    the fitted baselines are kept, so that a run scores only the dates after the last one
    scored."""
    from trainers.atft_gat.scoring import checked_columns, panel_calendar, score_panel
    from trainers.baselines import baseline_frames
    from trainers.context import atomic_write_bytes
    from trainers.heldout import ensemble_scores

    if trained.config.source == "synthetic":
        raise UserError("the study ran on the synthetic market: hpo.monitor scores a panel "
                        "file that grows with new dates; run a study on your panel first")
    end = split.get("test", split.get("val"))[1]
    checked_columns(trained, source)
    calendar = panel_calendar(source, trained.config)
    if not calendar or calendar[-1] <= date.fromisoformat(end):
        raise UserError(f"panel {source} has no date after the study's test period (it "
                        f"ends {end}); append the new dates' rows and run again")
    known = _known(state)
    done = known.filter(pl.col("series") == "model")["date"].max() if known is not None \
        else None
    last = done if done is not None else date.fromisoformat(end)
    scored = None
    if calendar[-1] > last:  # else every date with a realised return is scored already
        scored = score_panel(trained, source, dates=f"{last + timedelta(days=1)}:",
                             cache_dir=Path(cache_dir), with_target=True)
    fitted = fitted_baselines(trained, cache_dir, split, state)  # after the panel's checks
    rows = known
    if scored is not None:
        frames = {"model": scored.frame.rename({"score": "pred"}),
                  **baseline_frames(_view(trained, scored.panel), scored.wanted,
                                    fitted.predictors())}
        new = pl.concat([f.filter(pl.col("target").is_finite())
                         .select(pl.lit(name).alias("series"), pl.col("date").cast(pl.Date),
                                 pl.col("code").cast(pl.String), pl.col("pred").cast(pl.Float64),
                                 pl.col("target").cast(pl.Float64))
                         for name, f in frames.items()])
        if new.height:
            rows = new if known is None else pl.concat([known, new])
            if state is not None:
                buf = io.BytesIO()
                rows.write_parquet(buf)
                atomic_write_bytes(state / SCORES, buf.getvalue(), durable=False)
    if rows is None or not rows.height:
        raise UserError(f"panel {source}: no date after the study's test period (it ends "
                        f"{end}) has its return realised yet; run again once one has")
    by_name = {name: rows.filter(pl.col("series") == name).drop("series").sort("date", "code")
               for name in ("model", "best_feature", "linear")}
    # the report's blend (hpo.predict --blend): model and ridge, equal per-date z-weights
    by_name["blend"] = ensemble_scores([by_name["model"], by_name["linear"]])
    series = {name: days(frame, s) for name, frame in by_name.items()}
    return {"after": end, "series": series, "scored_dates": len(scored.dates) if scored else 0,
            "labels": {"model": "model", "best_feature": f"best feature ({fitted.feature})",
                       "linear": "ridge (every feature)", "blend": "model + ridge (blend)"},
            "validation": days(validation, s), "periods_per_year": s.periods_per_year,
            "horizon": s.horizon, "cost_bps": s.cost_bps}


def _view(trained: Any, panel: Any) -> Any:
    """The baselines' view of a scored panel: its raw features and the scored horizon."""
    from trainers.baselines import PanelView

    h = list(trained.config.horizons).index(trained.config.metric_horizon)
    return PanelView(x=panel.x, y=panel.y[:, :, h], present=panel.present, dates=panel.dates,
                     codes=panel.codes, feature_names=panel.feature_names)


def baseline_rows(trained: Any, scored: Any, split: Mapping[str, Any], cache_dir: Path,
                  name: str) -> Any:
    """``date, code, pred`` rows of the baseline ``name`` (``best_feature`` or ``linear``),
    fitted as the report's (``fitted_baselines``), on every stock present on the dates
    ``score_panel`` scored, whether or not their return is realised (``hpo.predict
    --blend``)."""
    from trainers.baselines import baseline_frames

    predictors = fitted_baselines(trained, cache_dir, split, None).predictors()
    if name not in predictors:
        raise UserError(f"no baseline {name!r}; the baselines are {', '.join(predictors)}")
    frames = baseline_frames(_view(trained, scored.panel), scored.wanted,
                             {name: predictors[name]}, realised=False)
    return frames[name].select("date", "code", "pred")


def days(rows: Any, s: Scoring) -> Any:
    """Per-date figures of ``date, code, pred, target`` rows through the study's book
    (``scoring``'s horizon, cost and book)."""
    from trainers.metrics import per_date_metrics

    rows = rows.sort("date", "code")
    return per_date_metrics(rows["date"].to_numpy(), rows["pred"].to_numpy(),
                            rows["target"].to_numpy(), codes=rows["code"].to_numpy(),
                            scoring=s).select("date", "rank_ic", "long_short", "long_short_net",
                                     "turnover")
