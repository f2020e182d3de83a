"""ATFT-GAT-FAN's held-out capability (``trainers.heldout``): what ``hpo.evaluate`` calls.

The test rows come from ``predict.predict_period`` (the saved model on the study's test dates,
through exactly the pipeline training used); every period is scored with the cross-sectional
figures at the study's ``metric_horizon``. The baselines, scored on the same dates with the
same figures and standard errors: the best single feature and a ridge fit on every panel
(``trainers.baselines``), and the planted oracle on a synthetic market.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trainers.atft_gat.folds import CV
from trainers.errors import UserError
from trainers.heldout import (
    HeldOut,
    Prediction,
    ensemble_scores,
    ranking_compare,
    ranking_costs,
    ranking_moments,
    ranking_returns,
    ranking_score,
)
from trainers.metrics.scoring import Scoring


def _load(trial_dir: Path) -> Any:
    from trainers.atft_gat.predict import load_trained

    return load_trained(trial_dir)


def _digest(trial_dir: Path) -> str:
    from trainers.atft_gat.predict import model_digest

    return model_digest(trial_dir)


def _check(trained: Any) -> None:
    if trained.config.test_fraction <= 0:
        raise UserError("holds out no test period (test_fraction = 0); set test_fraction in the "
                        "study file's [data] for a new study")


def _predict(trial_dir: Path, trained: Any, cache_dir: Path) -> Prediction:
    """The test rows of the trial's model; for a walk-forward trial also those of its fold
    ensemble (``context["test_models"]``: ``last_fold`` and ``fold_ensemble``)."""
    from trainers.atft_gat.predict import fold_model_files, predict_period

    frame, split, dates = predict_period(trial_dir, cache_dir=cache_dir, trained=trained)
    context: dict[str, Any] = {"cache_dir": Path(cache_dir), "split": split}
    files = fold_model_files(trial_dir)
    if trained.config.cv is CV.WALK_FORWARD and len(files) > 1:
        # the last fold's model is ``trained`` itself: its rows are ``frame``
        members = [predict_period(trial_dir, cache_dir=cache_dir,
                                  trained=_load_member(trial_dir, f))[0] for f in files[:-1]]
        context["test_models"] = {"last_fold": frame,
                                  "fold_ensemble": ensemble_scores([*members, frame])}
        context["fold_models"] = len(files)
    return Prediction(frame=frame, split=split.ranges(dates),
                      dates={"validation": dates[split.val], "test": dates[split.test]},
                      context=context)


def _load_member(trial_dir: Path, file: Path) -> Any:
    from trainers.atft_gat.predict import load_trained

    return load_trained(trial_dir, name=str(file.relative_to(trial_dir)))


def _members(trial_dir: Path) -> list[tuple[Path, Any]]:
    from trainers.atft_gat.predict import fold_model_files

    return [(f, _load_member(trial_dir, f)) for f in fold_model_files(trial_dir)]


def _score(frame: Any, trained: Any) -> tuple[dict[str, Any], dict[str, int]]:
    return ranking_score(frame, trained.config.scoring)


def _compare(a: Any, b: Any, trained: Any) -> dict[str, Any]:
    return ranking_compare(a, b, trained.config.scoring)


def _tear_sheet(frames: Any, trained: Any, out_dir: Path, title: str,
                report_lines: Any = ()) -> list[Path]:
    from trainers.tearsheet import tear_sheet

    return tear_sheet(frames, out_dir, title=title, report_lines=tuple(report_lines),
                      scoring=trained.config.scoring)


def _score_new(trained: Any, source: str, dates: str, cache_dir: Path) -> Any:
    from trainers.atft_gat.scoring import score_panel

    return score_panel(trained, source, dates=dates, cache_dir=cache_dir)


def _refit(trained: Any, trial_dir: Path, out_dir: Path, request: Any) -> dict[str, Any]:
    import dataclasses
    import json

    from trainers.atft_gat.refit import refit, refit_epochs
    from trainers.context import HISTORY_NAME, TrialContext

    history_file = Path(trial_dir) / HISTORY_NAME
    history = json.loads(history_file.read_text()) if history_file.is_file() else []
    epochs = refit_epochs(dict(request.trial_attrs), len(history))
    ctx = TrialContext(out_dir, seed=request.seed, cache_dir=request.cache_dir,
                       progress=request.progress)
    return dataclasses.asdict(refit(trained.config, ctx, through=request.through,
                                    epochs=epochs))


def _returns(frame: Any, trained: Any, trial_attrs: Any = None) -> Any:
    """The per-date long-short of a trial's rows with the book the trial recorded (its own
    when the study searched the book), else the chosen trial's."""
    from trainers.attrs import BOOK
    from trainers.metrics.book import Book

    s = trained.config.scoring if trained is not None else Scoring()
    recorded = (trial_attrs or {}).get(BOOK)
    if isinstance(recorded, dict):
        s = s.replace(book=Book(**recorded))
    return ranking_returns(frame, s)


def _costs(frame: Any, trained: Any) -> dict[str, Any]:
    return ranking_costs(frame, trained.config.costs, trained.config.scoring)


def _moments(frame: Any, trained: Any, *, net: bool = False) -> dict[str, float]:
    return ranking_moments(frame, trained.config.scoring, net=net)


def oracle_baseline(config: Any, dates: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """The planted oracle (``market_baselines``) on the validation and the test dates of a
    synthetic market; None for a user panel. With an execution lag it is scored on the same
    lagged target as the trials."""
    if config.source != "synthetic":
        return None
    import polars as pl

    from trainers.atft_gat.synthetic import generate_market, market_baselines

    frame, oracle = generate_market(n_stocks=config.n_stocks, n_dates=config.n_dates,
                                    seed=config.market_seed,
                                    difficulty=config.market_difficulty, return_oracle=True)
    market = frame.with_columns(oracle_own=oracle["oracle_own"],
                                oracle_peer=oracle["oracle_peer"])
    target = f"ret_{config.metric_horizon}d"
    if config.execution_lag:
        market = market.with_columns(
            pl.col(target).shift(-config.execution_lag).over("code"))
    return {period: market_baselines(market, dates[period], scoring=config.scoring)["oracle"]
            for period in ("validation", "test")}


def panel_baselines_of(trained: Any, prediction: Prediction) -> dict[str, Any]:
    """The best single feature and the ridge fit (``trainers.baselines``) on the study's
    panel as the trials read it (same cache, same execution lag, the scored horizon), fitted
    on the training dates, scored on the validation and test dates like the trials."""
    from trainers.atft_gat.data import cache_panel
    from trainers.atft_gat.train import load_features
    from trainers.baselines import PanelView, panel_baselines

    config = trained.config
    fc = load_features(config, Path(prediction.context["cache_dir"]))
    panel = cache_panel(fc).lagged(config.execution_lag)
    split = prediction.context["split"]
    h = list(config.horizons).index(config.metric_horizon)
    view = PanelView(x=panel.x, y=panel.y[:, :, h], present=panel.present,
                     dates=panel.dates, codes=panel.codes, feature_names=panel.feature_names)
    if not split.folds:
        return panel_baselines(view, {"validation": split.val, "test": split.test},
                               train_dates=split.train)
    # Walk-forward: each block scored by baselines fitted on its fold's training dates, as
    # the trials were; the test period by the last fold's, as the chosen model is.
    import polars as pl

    per_fold = [panel_baselines(view, {"validation": fold.val}, train_dates=fold.train)
                for fold in split.folds[:-1]]
    last = panel_baselines(view, {"validation": split.folds[-1].val, "test": split.test},
                           train_dates=split.folds[-1].train)
    frames = [f["frames"]["validation"] for f in per_fold] + [last["frames"]["validation"]]
    last["frames"]["validation"] = {
        name: pl.concat([f[name] for f in frames]) for name in ("best_feature", "linear")}
    last["best_feature"]["chosen_on"] = "each fold's training dates (the last fold's shown)"
    return last


def _baselines(trained: Any, prediction: Prediction) -> dict[str, Any] | None:
    s = trained.config.scoring
    fitted = panel_baselines_of(trained, prediction)
    oracle = oracle_baseline(trained.config, dict(prediction.dates))
    out: dict[str, Any] = {}
    for period in ("validation", "test"):
        rows: dict[str, Any] = {}
        if oracle is not None:
            rows["oracle"] = oracle[period]
        best = fitted["best_feature"]
        rows["best_feature"] = {
            **ranking_score(fitted["frames"][period]["best_feature"], s)[0],
            **best, "label": f"best feature ({best['feature']})"}
        linear = fitted["linear"]
        rows["linear"] = {
            **ranking_score(fitted["frames"][period]["linear"], s)[0],
            **linear, "label": "ridge (every feature)"}
        out[period] = rows
    out["frames"] = {period: {name: fitted["frames"][period][name]
                              for name in ("best_feature", "linear")}
                     for period in ("validation", "test")}
    return out


def _live(trained: Any, source: str, cache_dir: Path, split: Any, validation: Any,
          state: Path | None = None) -> dict[str, Any]:
    from trainers.atft_gat.monitor import live

    return live(trained, source, cache_dir, split, validation, trained.config.scoring,
                state=state)


def _describe(trained: Any) -> dict[str, Any]:
    s = trained.config.scoring
    out = {"metric_horizon": s.horizon, "cost_bps": s.cost_bps,
           "periods_per_year": s.periods_per_year,
           "book": {**s.book.to_json(),
                    "applies_to": "the trials and every baseline, on validation and test"}}
    config = trained.config
    if config.cv is CV.WALK_FORWARD:
        out["validation_scheme"] = (
            f"purged walk-forward, {config.cv_folds} folds ({config.cv_window} window); "
            "validation figures over every fold's block, each by its own fold's model; the "
            "test period scored by the last fold's model and by the fold ensemble (the mean "
            "of every fold model's per-date standardised scores); [evaluate] test_model "
            "picks the test row, both are in the report")
    return out


class RankingHeldOut(HeldOut):
    """ATFT-GAT-FAN's held-out capability: every step of the protocol
    (``trainers.heldout``) through the study's scoring (``scoring``)."""

    selection_metric = "sharpe"

    def load(self, trial_dir: Path) -> Any:
        return _load(trial_dir)

    def digest(self, trial_dir: Path) -> str:
        return _digest(trial_dir)

    def check(self, trained: Any) -> None:
        _check(trained)

    def predict(self, trial_dir: Path, trained: Any, cache_dir: Path) -> Prediction:
        return _predict(trial_dir, trained, cache_dir)

    def score(self, frame: Any, trained: Any) -> tuple[dict[str, Any], dict[str, int]]:
        return _score(frame, trained)

    def moments(self, frame: Any, trained: Any, *, net: bool = False) -> dict[str, float]:
        return _moments(frame, trained, net=net)

    def baselines(self, trained: Any, prediction: Prediction) -> dict[str, Any] | None:
        return _baselines(trained, prediction)

    def describe(self, trained: Any) -> dict[str, Any]:
        return _describe(trained)

    def compare(self, rows_a: Any, rows_b: Any, trained: Any) -> dict[str, Any]:
        return _compare(rows_a, rows_b, trained)

    def tear_sheet(self, frames: Any, trained: Any, out_dir: Path, title: str,
                   report_lines: Any = ()) -> list[Path]:
        return _tear_sheet(frames, trained, out_dir, title, report_lines)

    def returns(self, rows: Any, trained: Any, trial_attrs: Any = None) -> Any:
        return _returns(rows, trained, trial_attrs)

    def costs(self, frame: Any, trained: Any) -> dict[str, Any]:
        return _costs(frame, trained)

    def score_new(self, trained: Any, source: str, dates: str, cache_dir: Path) -> Any:
        return _score_new(trained, source, dates, cache_dir)

    def refit(self, trained: Any, trial_dir: Path, out_dir: Path, request: Any
              ) -> dict[str, Any]:
        return _refit(trained, trial_dir, out_dir, request)

    def members(self, trial_dir: Path) -> list[tuple[Path, Any]]:
        return _members(trial_dir)

    def live(self, trained: Any, source: str, cache_dir: Path, split: Any, validation: Any,
             state: Path | None = None) -> dict[str, Any]:
        return _live(trained, source, cache_dir, split, validation, state)

    def baseline_new(self, trained: Any, scored: Any, split: Any, cache_dir: Path,
                     name: str) -> Any:
        from trainers.atft_gat.monitor import baseline_rows

        return baseline_rows(trained, scored, split, cache_dir, name)


HELDOUT = RankingHeldOut()
