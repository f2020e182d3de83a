"""A walk-forward trial: one model per fold, scored over every fold's validation dates together.

With ``cv = "walk_forward"`` (``folds.py`` has the layout) a trial runs the recipe of
``train.py`` once per fold, in order: fold k's model is trained on its training dates only
(features standardised with their statistics, epochs selected as configured) and predicts
fold k's validation block. After each fold the trial reports its running figures to the study,
computed over the blocks done so far, with the fold's own figures beside them (``instance``):
the study's pruners rank trials fold by fold (MO-ASHA's rungs and the median pruner on the
running figures; the Wilcoxon pruner on the folds' own, paired with the best trial's).

The objectives, once every fold is done, are the walk-forward backtest's: ``rank_ic`` the mean
per-date RankIC over every block's dates, ``sharpe`` / ``sharpe_net`` / ``turnover`` those of
the concatenated daily long-short, ``val_loss`` the date-weighted mean of the folds'.
``predictions.parquet`` holds every block's rows with a column ``fold`` (1-based), rewritten
after each fold, so a trial pruned after k folds keeps their rows (the PBO and the effective
number of trials of ``hpo.evaluate`` read them, on the dates every trial has); the trial
attrs ``folds`` (each fold's ``train`` and ``validation`` first and last dates) and
``fold_metrics`` (each fold's figures, epochs and selected epoch) show the rest.

The saved ``model.pt`` is the last fold's model, trained on the most dates and validated on
the latest block; every fold's model is kept as ``fold_models/fold_<k>.pt``. ``hpo.evaluate``
scores the test period with both the last fold's model and the **fold ensemble** (the mean of
the fold models' per-date standardised scores: the K models the validation figures describe),
``[evaluate] test_model`` says which one is the report's test row; ``hpo.refit`` trains the
configuration again on every date once the test period is open.

Checkpoints: after every epoch (the fold's runner, its epoch-selection state, the finished
folds' predictions), inside an epoch on a stop or every ``checkpoint_every_s`` (``train.py``'s
``fit_epochs``), and after every fold but the last; a killed trial resumes inside the fold and
the epoch it reached, and ends with the values an uninterrupted run has.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from trainers import attrs
from trainers.atft_gat.config import TrainConfig
from trainers.atft_gat.inputs import fold_inputs, load_study_panel
from trainers.atft_gat.outputs import save_model, write_predictions
from trainers.atft_gat.predict import FOLD_MODELS
from trainers.atft_gat.prepare import coverage, with_calendar
from trainers.atft_gat.record import PERIODS_PER_YEAR, record_data, record_run, record_timing
from trainers.atft_gat.train import fit_epochs, new_model
from trainers.context import TrialContext
from trainers.metrics import panel_metrics
from trainers.runtime import load_runner, resume_state, save_checkpoint, seed_everything

FOLDS = "folds"  # trial attr: each fold's train and validation first and last dates
FOLD_METRICS = "fold_metrics"  # trial attr: each fold's own figures
STATE_KEY = "walk_forward"  # the checkpoint's record of the folds done
# The figures each fold reports as its own (``instance``) and ``fold_metrics`` lists.
FOLD_FIGURES = ("rank_ic", "ic", "sharpe", "sharpe_net", "turnover", "val_loss")


def fold_seed(seed: int, fold: int) -> int:
    """The seed a fold's model is initialised from: a hash of the trial's and the fold's."""
    return int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])


def combined(done: list[dict[str, Any]], config: TrainConfig) -> dict[str, float]:
    """The walk-forward figures over every finished fold's validation rows (module
    docstring)."""
    preds = {k: np.concatenate([d["preds"][k] for d in done]) for k in done[0]["preds"]}
    metrics = panel_metrics(preds["date"], preds["pred"], preds["target"], codes=preds["code"],
                            scoring=config.scoring)
    weights = [d["n_dates"] for d in done]
    metrics["val_loss"] = float(np.average([d["metrics"]["val_loss"] for d in done],
                                           weights=weights))
    metrics["train_loss"] = float(np.mean([d["metrics"]["train_loss"] for d in done]))
    return metrics


def train(config: TrainConfig, ctx: TrialContext) -> dict[str, float]:
    """One walk-forward trial (module docstring)."""
    t_setup = time.perf_counter()
    seed_everything(ctx.seed)
    study = load_study_panel(config, ctx)
    config = with_calendar(config, study.source_dates)
    ctx.set_attr(PERIODS_PER_YEAR, config.periods_per_year)
    split, folds = study.split, study.split.folds
    ctx.set_attr(FOLDS, [fold.ranges(study.source_dates) for fold in folds])
    ctx.set_attr(attrs.DATE_SPLIT, split.ranges(study.source_dates))
    ctx.set_attr(attrs.SPLIT, {**split.ranges(study.source_dates), "purge_dates": split.purge})
    whole = fold_inputs(study, config, train=folds[-1].train, val=split.val)
    record_data(ctx, whole, config, coverage=coverage(
        whole.fc, whole.panel, np.concatenate([whole.train_dates, whole.val_dates]),
        whole.h_idx, lag=config.execution_lag))
    record_timing(ctx, setup_seconds=time.perf_counter() - t_setup,
                  graph_seconds=study.graph_seconds)

    # The shared resume path (trainers.runtime.resume): the checkpoint is read and checked
    # against the settings first; fold k's runner is put back once fold k's model is built.
    state, kept = resume_state(ctx, config=config, optional={
        STATE_KEY: None, "best": None, "stale": 0, "partial": None})
    saved = kept[STATE_KEY] or {"fold": 0, "done": [], "history": []}
    done: list[dict[str, Any]] = list(saved["done"])
    epoch_seconds: list[float] = []
    step_seconds: list[float] = []
    final_batch = config.batch_size
    for k in range(len(done), len(folds)):
        ctx.reporter.stage = f"fold {k + 1}/{len(folds)}"  # progress lines and hpo.status
        inp = fold_inputs(study, config, train=folds[k].train, val=folds[k].val)
        inside = state is not None and saved["fold"] == k and "runner" in state
        if not inside:
            seed_everything(fold_seed(ctx.seed, k))
        runner, fit_plan = new_model(inp, config, ctx)
        start, best, stale = 0, {"ic": -math.inf, "epoch": 0, "weights": None}, 0
        history: list[dict[str, Any]] = []
        if inside:
            start, best, stale = load_runner(runner, state), kept["best"], kept["stale"]
            history = list(saved["history"])

        def report(epoch: int, row: dict[str, Any], history: list = history) -> None:
            history.append({"epoch": epoch, **row})

        def checkpoint(epoch: int, best: dict[str, Any], stale: int,
                       partial: dict[str, Any] | None = None, k: int = k,
                       history: list = history, runner: Any = runner) -> None:
            save_checkpoint(runner, ctx, config=config, epoch=epoch, extra={
                "best": best, "stale": stale, "partial": partial,
                STATE_KEY: {"fold": k, "done": done, "history": history}})

        fitted = fit_epochs(runner, inp, config, ctx, fit_plan, start_epoch=start, best=best,
                            stale=stale, report=report, checkpoint=checkpoint,
                            epochs_done=start if inside else 0,
                            label=f"fold {k + 1}/{len(folds)} ",
                            partial=kept["partial"] if inside else None)
        final_batch = runner.micro_batch
        if not math.isfinite(fitted.metrics.get("train_loss", math.nan)) and history:
            # resumed after the fold's last epoch: its loss is in the fold's history
            scored = fitted.best["epoch"] if len(inp.select_dates) else len(history)
            fitted.metrics["train_loss"] = history[scored - 1].get("train_loss", math.nan)
        epoch_seconds += fitted.epoch_seconds
        step_seconds += fitted.step_seconds
        done.append({"fold": k + 1, "metrics": fitted.metrics, "preds": fitted.preds,
                     "n_dates": len(inp.val_dates), "epochs": fitted.epochs_run,
                     "selected_epoch": fitted.best["epoch"] if len(inp.select_dates) else None,
                     "history": history})
        running = combined(done, config)
        ctx.set_attr(FOLD_METRICS, fold_metrics(done))
        write_folds(ctx, done)  # a trial pruned after this fold keeps the folds it finished
        last = k == len(folds) - 1
        # Every fold's model, for the fold ensemble of the test period (hpo.evaluate); before
        # the report, so a pruned fold still leaves its model.
        (ctx.output_dir / FOLD_MODELS).mkdir(parents=True, exist_ok=True)
        save_model(ctx.output_dir / FOLD_MODELS / f"fold_{k + 1}.pt", runner, config,
                   panel=inp.panel, with_graph=fitted.with_graph)
        if last:
            save_model(ctx.output_dir / "model.pt", runner, config, panel=inp.panel,
                       with_graph=fitted.with_graph)
        ctx.report(k + 1, {**running, "fold": k + 1},
                   instance={m: fitted.metrics.get(m) for m in FOLD_FIGURES})
        if not last:  # the next fold starts fresh from here: no runner in this checkpoint
            save_checkpoint(None, ctx, config=config, epoch=0,
                            extra={STATE_KEY: {"fold": k + 1, "done": done, "history": []}})
        ctx.log(f"fold {k + 1}/{len(folds)} rank_ic={fitted.metrics['rank_ic']:.4f} "
                f"sharpe={fitted.metrics['sharpe']:.3f}; over {k + 1} fold(s) "
                f"rank_ic={running['rank_ic']:.4f} sharpe={running['sharpe']:.3f}")

    ctx.reporter.stage = None
    record_run(ctx, selected_epoch=None, epoch_seconds=epoch_seconds,
               step_seconds=step_seconds, final_batch_size=final_batch)
    write_folds(ctx, done)
    return combined(done, config)


def write_folds(ctx: TrialContext, done: list[dict[str, Any]]) -> None:
    """``predictions.parquet``: the finished folds' validation rows with their ``fold``."""
    preds = {key: np.concatenate([d["preds"][key] for d in done]) for key in done[0]["preds"]}
    preds["fold"] = np.concatenate([np.full(len(d["preds"]["date"]), d["fold"], dtype=np.int64)
                                    for d in done])
    write_predictions(ctx.output_dir / "predictions.parquet", preds)


def fold_metrics(done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trial attr ``fold_metrics``: each finished fold's own figures, its epochs and the
    epoch its selection chose (None without ``select_fraction``)."""
    return [{"fold": d["fold"], **{m: d["metrics"].get(m) for m in FOLD_FIGURES},
             "epochs": d["epochs"], "selected_epoch": d["selected_epoch"]} for d in done]
