"""Refit: the chosen configuration trained again on every date through a given day.

After a study has chosen and its test period has been opened (``hpo.evaluate``), the model
that goes live should learn from the newest data too: the validation and test dates included.
A refit trains the chosen trial's resolved configuration with its seed for its selected number
of epochs (the epoch epoch-selection picked, else the epochs it ran) on every date whose label
is realised by ``through``:

    [ lookback warm-up ][ fit dates ........................................ ][ purge ] through

The last fit date is ``through`` minus the study's ``purge`` (at least the label span, horizon
plus execution lag), so no label reaches past ``through``; nothing after ``through`` is read
(features, targets, graph returns). Everything else is the recipe's own (``train.py``): the
feature cache, statistics of the fit dates, the correlation graphs, the batches and their
order (seed, epoch), the optimiser, the learning-rate schedule of the whole phase plan, the
phase of every epoch. No date is held back, so nothing is validated and no epoch is chosen:
the refit runs the number of epochs the study's selection found. With the dates the trial
fitted on, a refit reproduces that trial's model exactly (a test proves it).

Epochs checkpoint as in a trial, so a killed refit resumes where it stopped. ``model.pt`` has
the trial's format: ``hpo.predict --model refit`` scores with it through the same pipeline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainers import attrs
from trainers.atft_gat.config import TrainConfig
from trainers.atft_gat.data import DateSplit, cache_panel, standardise
from trainers.atft_gat.model import ATFTGATFAN
from trainers.atft_gat.outputs import save_model
from trainers.atft_gat.prepare import Inputs, load_features, no_graphs, zscore_targets
from trainers.atft_gat.record import SELECTED_EPOCH
from trainers.atft_gat.train import epoch_order, load_graphs, step_sizes, train_epoch
from trainers.context import TrialContext
from trainers.errors import UserError
from trainers.runtime import (
    StepRunner,
    release_host_memory,
    resume,
    save_checkpoint,
    seed_everything,
)

MODEL_FILE = "model.pt"


@dataclass(frozen=True)
class RefitResult:
    """What a refit trained on and wrote."""

    fit: tuple[str, str]  # first and last fit date (ISO)
    through: str  # the last date read
    fit_dates: int
    epochs: int
    train_loss: float  # the last epoch's mean step loss


def through_index(dates: np.ndarray, through: str | None) -> int:
    """The index of the last panel date on or before ``through`` (ISO date; None: the last
    date of the panel)."""
    if through is None:
        return len(dates) - 1
    try:
        day = np.datetime64(through, "D")
    except ValueError:
        raise UserError(f"--through {through!r} is not a date; use YYYY-MM-DD") from None
    idx = int(np.searchsorted(dates.astype("datetime64[D]"), day, side="right")) - 1
    if idx < 0:
        raise UserError(f"--through {through} is before the panel's first date {dates[0]}")
    return idx


def refit_inputs(config: TrainConfig, ctx: TrialContext, through: str | None) -> Inputs:
    """The recipe's inputs (``train.prepare_inputs``) for a refit: the panel cut after
    ``through``, every labelled date up to ``through`` minus ``purge`` fitted, none held back."""
    fc = load_features(config, ctx.cache_dir)
    panel = cache_panel(fc, missing_indicator=config.missing_indicator)
    source_dates = panel.dates
    last = through_index(source_dates, through)
    t_graph = time.perf_counter()
    panel = panel.head(last + 1).lagged(config.execution_lag)
    h_idx = list(config.horizons).index(config.metric_horizon)
    fit = np.arange(config.lookback - 1, last - config.purge + 1, dtype=np.int64)
    no_dates = UserError(
        f"no date through {source_dates[last]} has a full lookback of {config.lookback} dates "
        f"and a label {config.purge} dates (the study's purge) before it; refit through a "
        "later date")
    if len(fit) == 0:
        raise no_dates
    graphs = (load_graphs(fc, panel, config, ctx) if config.use_graph
              else no_graphs(len(panel.dates)))
    release_host_memory()
    graph_seconds = time.perf_counter() - t_graph
    panel = standardise(panel, fit, moments=fc.feature_moments(fit))
    y_z = zscore_targets(panel.y)
    fit = fit[torch.isfinite(y_z[fit, :, h_idx]).any(dim=1).numpy()]
    if len(fit) == 0:
        raise no_dates
    empty = np.zeros(0, dtype=np.int64)
    split = DateSplit(train=fit, val=empty, test=empty, purge=config.purge,
                      horizon=max(config.horizons), lag=config.execution_lag)
    return Inputs(fc=fc, split=split, source_dates=source_dates, panel=panel, y_z=y_z,
                  graphs=graphs, train_dates=fit, select_dates=empty, val_dates=empty,
                  h_idx=h_idx, graph_seconds=graph_seconds)


def refit(config: TrainConfig, ctx: TrialContext, *, through: str | None, epochs: int
          ) -> RefitResult:
    """Train ``config`` with ``ctx.seed`` for the first ``epochs`` epochs of its phase plan on
    every date through ``through`` (module docstring); writes ``model.pt`` in
    ``ctx.output_dir``."""
    plan = config.phase_plan()
    if not 1 <= epochs <= len(plan):
        raise UserError(f"a refit of {len(plan)} planned epochs cannot run {epochs}")
    seed_everything(ctx.seed)
    inp = refit_inputs(config, ctx, through)
    dates_per_step, steps_per_epoch, rows_per_step = step_sizes(inp, config)
    model = ATFTGATFAN(config.model_config(), n_features=inp.panel.n_inputs)
    # The learning-rate schedule spans the whole phase plan, as in the trial whose selected
    # epoch this reproduces.
    runner = StepRunner(model, config.runtime(), ctx=ctx,
                        total_steps=steps_per_epoch * len(plan),
                        batch_size=max(config.batch_size, rows_per_step))
    base_lrs = list(runner.scheduler.base_lrs)
    ctx.set_attr(attrs.N_PARAMS, sum(p.numel() for p in model.parameters()))
    start_epoch, _ = resume(runner, ctx, config=config)
    loss = float("nan")
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        phase = plan[epoch]
        scale = config.finetune_lr_scale if phase == "finetune" else 1.0
        runner.scheduler.base_lrs = [lr * scale for lr in base_lrs]
        order = epoch_order(inp.train_dates, ctx.seed, epoch,
                            paired=config.turnover_weight > 0)
        fit = train_epoch(runner, inp, config, order, with_graph=phase != "baseline",
                          dates_per_step=dates_per_step, steps=steps_per_epoch,
                          epoch=epoch + 1, epochs=epochs)
        loss = fit.mean_loss
        ctx.report(epoch + 1, {"train_loss": loss, "phase": phase, "lr": runner.lr,
                               "samples": fit.samples})
        save_checkpoint(runner, ctx, config=config, epoch=epoch + 1)
        ctx.log(f"refit epoch {epoch + 1}/{epochs} [{phase}] train_loss={loss:.4f} "
                f"({time.perf_counter() - t0:.1f}s)")
    if start_epoch >= epochs and ctx.history:
        loss = float(ctx.history[-1].get("train_loss") or float("nan"))
    save_model(ctx.output_dir / MODEL_FILE, runner, config, panel=inp.panel,
               with_graph=plan[epochs - 1] != "baseline")
    dates = inp.panel.dates
    return RefitResult(fit=(str(dates[inp.train_dates[0]]), str(dates[inp.train_dates[-1]])),
                       through=str(dates[-1]), fit_dates=len(inp.train_dates), epochs=epochs,
                       train_loss=loss)


def refit_epochs(trial_attrs: dict[str, Any], history_length: int) -> int:
    """The epochs a refit of a trial runs: the epoch its selection chose, else the epochs it
    ran (fewer than planned when patience stopped it); for a walk-forward trial, those of
    its last fold's model."""
    folds = trial_attrs.get("fold_metrics")
    if isinstance(folds, list) and folds:  # walk-forward: the last fold's model's epochs
        last = folds[-1]
        return int(last.get("selected_epoch") or last["epochs"])
    selected = trial_attrs.get(SELECTED_EPOCH)
    if isinstance(selected, int) and selected > 0:
        return selected
    if history_length < 1:
        raise UserError("the trial recorded no finished epoch; it cannot be refitted")
    return history_length
