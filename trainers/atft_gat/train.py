"""The ATFT-GAT-FAN training recipe: data -> graph -> model -> loop -> validation -> metrics.

Read it top to bottom:

1. Features come only from the Arrow feature cache (built once from the synthetic market or
   the user's panel, then memory-mapped), densified to (dates, stocks, features).
2. Dates are split into train / purge gap / validation; features are standardised with
   train-date statistics only; per-date k-NN correlation graphs come from trailing returns
   and are cached beside the features.
3. One step = whole dates' cross-sections packed up to ``batch_size`` stock-day rows, each
   date its own graph (disjoint union). The shared runtime splits a step into micro-batches
   only after an out-of-memory error (then graph edges across chunks are dropped for that
   step, documented in the README).
4. Loss, per date: Huber/MSE on cross-sectionally z-scored targets of every horizon +
   ``rank_weight`` x (1 - soft Spearman) + ``ic_weight`` x (1 - IC) + ``quantile_weight`` x
   pinball loss of the quantile heads.
5. After every epoch: validation metrics on the ``metric_horizon`` target, a report to the
   study, an atomic checkpoint. With ``select_fraction`` > 0 a purged slice at the end of the
   training period picks the best epoch, whose weights are scored; otherwise the last epoch
   is. The scored model's validation predictions are written to ``predictions.parquet``.

The pieces it calls live beside it: ``prepare`` (features, leakage scores, selection dates,
targets), ``batch`` (packing dates into batches), ``loss``, ``record`` (the trial attrs) and
``outputs`` (predictions and the scored model).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trainers import attrs
from trainers.atft_gat.batch import Batch, make_batch, pack_dates
from trainers.atft_gat.config import TrainConfig
from trainers.atft_gat.data import Panel, cache_panel
from trainers.atft_gat.folds import CV
from trainers.atft_gat.graph import DateGraphs
from trainers.atft_gat.inputs import load_graphs, prepare_inputs
from trainers.atft_gat.loss import batch_loss, scoring_loss
from trainers.atft_gat.model import ATFTGATFAN
from trainers.atft_gat.outputs import save_model, write_predictions
from trainers.atft_gat.prepare import (
    Inputs,
    cache_source,
    coverage,
    load_features,
    no_graphs,
    with_calendar,
    zscore_targets,
)
from trainers.atft_gat.record import (
    DATES_PER_STEP,
    PERIODS_PER_YEAR,
    STOPPED_EARLY,
    graph_summary,
    record_data,
    record_run,
    record_split,
    record_timing,
)
from trainers.context import TrialContext
from trainers.errors import StopRequested
from trainers.metrics import panel_metrics
from trainers.progress import phase_of
from trainers.runtime import (
    StepRunner,
    resume,
    save_checkpoint,
    seed_everything,
)

# What predict.py, the tests and the scripts import from the recipe; several of these moved to
# the sibling modules and are re-exported here.
__all__ = ["Batch", "cache_panel", "cache_source", "epoch_batches", "graph_summary",
           "load_features", "load_graphs", "make_batch", "no_graphs", "pack_dates",
           "epoch_order",
           "prepare_inputs", "train", "validate", "zscore_targets"]

# An epoch's selection RankIC must beat the best so far by more than this to count as
# better: float noise between two equal epochs is not progress.
MIN_IMPROVEMENT = 1e-6


# -- batches --------------------------------------------------------------------------------
def epoch_batches(panel: Panel, y_z: torch.Tensor, graphs: DateGraphs, order: np.ndarray, *,
                  dates_per_step: int, steps: int, lookback: int, with_graph: bool,
                  prefetch: bool, skip: int = 0) -> Iterator[tuple[Batch, float]]:
    """The epoch's batches in ``order``, each with the seconds the loop waited for it.

    With ``prefetch`` the next batch is built in a background thread while the caller trains
    on the current one, so on a GPU host the CPU-side assembly hides behind the kernels; the
    batches and their order are the same either way.
    """
    chunks = [np.sort(order[i * dates_per_step:(i + 1) * dates_per_step]) for i in range(steps)]
    chunks = [c for c in chunks if len(c)][skip:]  # the first `skip` ran before a resume

    def build(dates: np.ndarray) -> Batch:
        return make_batch(panel, y_z, graphs, dates, lookback=lookback, with_graph=with_graph)

    if not prefetch:
        for dates in chunks:
            started = time.perf_counter()
            batch = build(dates)
            yield batch, time.perf_counter() - started
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(build, chunks[0]) if chunks else None
        for nxt in [*chunks[1:], None]:
            started = time.perf_counter()
            batch = pending.result()
            waited = time.perf_counter() - started
            pending = pool.submit(build, nxt) if nxt is not None else None
            yield batch, waited


def epoch_order(dates: np.ndarray, seed: int, epoch: int, *, paired: bool) -> np.ndarray:
    """The order an epoch visits the training dates in; it depends on (seed, epoch) only, so
    a resumed run replays it exactly.

    ``paired`` (a turnover penalty, ``loss.turnover_penalty``): the dates in pairs of
    consecutive training dates, the pairs shuffled, so that each step sees a date beside the
    one after it. Pairs start on even positions in even epochs and on odd ones in odd epochs,
    so every consecutive pair is seen every two epochs.
    """
    rng = np.random.default_rng([seed, epoch])
    if not paired:
        return rng.permutation(dates)
    dates = np.sort(np.asarray(dates))
    shift = epoch % 2
    pairs = [dates[i:i + 2] for i in range(shift, len(dates), 2)]
    if shift and len(dates):
        pairs.append(dates[:1])
    return np.concatenate([pairs[i] for i in rng.permutation(len(pairs))]) if pairs else dates


@dataclass
class EpochFit:
    """One epoch's training pass: step losses, seconds spent waiting for batches, stock-day
    rows trained on, and the seconds of each optimiser step (batch assembly excluded)."""

    losses: list[float] = field(default_factory=list)
    batch_seconds: float = 0.0
    samples: int = 0
    step_seconds: list[float] = field(default_factory=list)

    @property
    def mean_loss(self) -> float:
        return float(np.mean(self.losses)) if self.losses else float("nan")

    def state(self, epoch: int) -> dict[str, Any]:
        """This part of epoch ``epoch`` (0-based) as a checkpoint's ``partial``."""
        return {"epoch": epoch, "losses": list(self.losses), "samples": self.samples,
                "batch_seconds": self.batch_seconds}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochFit:
        return cls(losses=list(state["losses"]), batch_seconds=float(state["batch_seconds"]),
                   samples=int(state["samples"]))


def train_epoch(runner: StepRunner, inp: Inputs, config: TrainConfig, order: np.ndarray, *,
                with_graph: bool, dates_per_step: int, steps: int, epoch: int | None = None,
                epochs: int | None = None, resumed: EpochFit | None = None,
                boundary: Callable[[EpochFit], None] | None = None) -> EpochFit:
    """Step 3 for one epoch: ``steps`` runtime steps over the dates of ``order``.

    ``resumed``: the part of this epoch a mid-epoch checkpoint holds (its steps are not run
    again). ``boundary(fit)`` is called before every step, with the steps done so far: the
    recipe's chance to save a step checkpoint or stop there."""
    runner.module.train()
    fit = resumed or EpochFit()
    total = min(steps, -(-len(order) // dates_per_step))
    progress = phase_of(runner.ctx, "train", total=total, unit="steps", epoch=epoch,
                        epochs=epochs)
    if fit.losses:
        progress.advance(len(fit.losses))
    # On a GPU the next batch is assembled on the CPU while this one trains.
    for batch, waited in epoch_batches(inp.panel, inp.y_z, inp.graphs, order,
                                       dates_per_step=dates_per_step, steps=steps,
                                       lookback=config.lookback, with_graph=with_graph,
                                       prefetch=runner.device.type == "cuda",
                                       skip=len(fit.losses)):
        if boundary is not None:
            boundary(fit)
        fit.batch_seconds += waited

        def loss_fn(s: slice, batch: Batch = batch) -> torch.Tensor:
            b = batch.sub(s)
            x, y, e, w = runner.to_device(b.x, b.y, b.edges, b.weight)
            b = Batch(x, y, b.y_raw, runner.to_device(b.group), b.stock, b.date, e, w)
            out = runner.model(b.x, b.edges if with_graph else None,
                               b.weight if with_graph else None)
            return batch_loss(out, b, config)[0]

        t_step = time.perf_counter()
        fit.losses.append(runner.step(len(batch), loss_fn))
        fit.step_seconds.append(time.perf_counter() - t_step)
        fit.samples += len(batch)
        progress.advance()
    progress.close()
    return fit


# -- the recipe ----------------------------------------------------------------------------
def train(config: TrainConfig, ctx: TrialContext) -> dict[str, float]:
    """One holdout trial (module docstring); walk-forward validation is ``walk_forward.py``."""
    if config.cv is CV.WALK_FORWARD:
        raise ValueError("a walk-forward trial runs trainers.atft_gat.walk_forward.train")
    t_setup = time.perf_counter()
    seed_everything(ctx.seed)

    # 1-2. data, split, graphs; the leakage guard and the coverage check may refuse the trial
    inp = prepare_inputs(config, ctx)
    config = with_calendar(config, inp.source_dates)
    ctx.set_attr(PERIODS_PER_YEAR, config.periods_per_year)
    record_split(ctx, inp)
    record_data(ctx, inp, config, coverage=coverage(inp.fc, inp.panel, inp.used_dates,
                                                    inp.h_idx, lag=config.execution_lag))

    # model and runtime
    runner, model_fit = new_model(inp, config, ctx)
    start_epoch, saved = resume(runner, ctx, config=config, extra={
        "best": {"ic": -math.inf, "epoch": 0, "weights": None}, "stale": 0},
        optional={"partial": None})
    record_timing(ctx, setup_seconds=time.perf_counter() - t_setup,
                  graph_seconds=inp.graph_seconds)

    # 3-5. per epoch: train, validate, select the best epoch, report, checkpoint
    def checkpoint(epoch: int, best: dict[str, Any], stale: int,
                   partial: dict[str, Any] | None = None) -> None:
        save_checkpoint(runner, ctx, config=config, epoch=epoch,
                        extra={"best": best, "stale": stale, "partial": partial})

    fitted = fit_epochs(runner, inp, config, ctx, model_fit, start_epoch=start_epoch,
                        best=saved["best"], stale=saved["stale"], report=ctx.report,
                        checkpoint=checkpoint, epochs_done=len(ctx.history),
                        partial=saved["partial"])

    # the scored model (step 5), its predictions and the run's record
    record_run(ctx, selected_epoch=fitted.best["epoch"] if len(inp.select_dates) else None,
               epoch_seconds=fitted.epoch_seconds, step_seconds=fitted.step_seconds,
               final_batch_size=runner.micro_batch)
    write_predictions(ctx.output_dir / "predictions.parquet", fitted.preds)
    save_model(ctx.output_dir / "model.pt", runner, config, panel=inp.panel,
               with_graph=fitted.with_graph)
    return fitted.metrics


@dataclass
class ModelFit:
    """How one model trains: its phase plan and the packing of its steps."""

    plan: list[str]
    dates_per_step: int
    steps_per_epoch: int


@dataclass
class Fitted:
    """One model's training: the scored model's metrics, predictions and graph use, the best
    epoch's state, epoch and step times."""

    metrics: dict[str, float]
    preds: dict[str, np.ndarray]
    with_graph: bool
    best: dict[str, Any]
    epoch_seconds: list[float]
    step_seconds: list[float]
    epochs_run: int


def new_model(inp: Inputs, config: TrainConfig, ctx: TrialContext
              ) -> tuple[StepRunner, ModelFit]:
    """A fresh model and its runtime for ``inp`` (initialised from the global RNG)."""
    dates_per_step, steps_per_epoch, rows_per_step = step_sizes(inp, config)
    plan = config.phase_plan()
    model = ATFTGATFAN(config.model_config(), n_features=inp.panel.n_inputs)
    # The runtime's first micro-batch covers a whole step, so dates are only cut into chunks
    # after an out-of-memory error, never by default.
    runner = StepRunner(model, config.runtime(), ctx=ctx,
                        total_steps=steps_per_epoch * len(plan),
                        batch_size=max(config.batch_size, rows_per_step), checks_stop=False)
    ctx.set_attr(attrs.N_PARAMS, sum(p.numel() for p in model.parameters()))
    ctx.set_attr(DATES_PER_STEP, dates_per_step)
    return runner, ModelFit(plan=plan, dates_per_step=dates_per_step,
                            steps_per_epoch=steps_per_epoch)


def fit_epochs(runner: StepRunner, inp: Inputs, config: TrainConfig, ctx: TrialContext,
               fit_plan: ModelFit, *, start_epoch: int, best: dict[str, Any], stale: int,
               report: Callable[[int, dict[str, Any]], None],
               checkpoint: Callable[..., None],
               epochs_done: int, label: str = "",
               partial: dict[str, Any] | None = None) -> Fitted:
    """Steps 3-5 for one model from ``start_epoch``: per epoch train, validate, select the
    best epoch, ``report(epoch, row)``, ``checkpoint(epoch, best, stale, partial=None)``; then
    the scored model (``score_selected``). ``epochs_done``: epochs this model had finished
    before (what a run resumed after its last epoch scores).

    Inside an epoch, before each step: when the context asks to stop (SIGTERM, Ctrl-C) or a
    periodic step checkpoint is due (``ctx.checkpoint_every_s``), ``checkpoint`` is called
    with ``partial`` (the epoch's steps done, their losses) and, to stop, StopRequested is
    raised; a stop during validation keeps the epoch's whole training. ``partial`` from the
    checkpoint resumes that epoch at that step: the runner's state (model, optimizer,
    scheduler, scaler, RNG) is the checkpoint's and the batch order depends on (seed, epoch)
    only, so the run ends with the values an uninterrupted one has."""
    plan = fit_plan.plan
    base_lrs = list(runner.scheduler.base_lrs)
    metrics: dict[str, float] = {}
    preds: dict[str, np.ndarray] = {}
    epoch_seconds: list[float] = []
    step_seconds: list[float] = []
    with_graph = plan[-1] != "baseline"  # what a run resumed after its last epoch scores
    done = epochs_done
    for epoch in range(start_epoch, len(plan)):
        t0 = time.perf_counter()
        phase = plan[epoch]
        scale = config.finetune_lr_scale if phase == "finetune" else 1.0
        runner.scheduler.base_lrs = [lr * scale for lr in base_lrs]
        with_graph = phase != "baseline"
        # Shuffle order depends only on (seed, epoch): a resumed run replays it exactly.
        order = epoch_order(inp.train_dates, ctx.seed, epoch,
                            paired=config.turnover_weight > 0)
        resumed = (EpochFit.from_state(partial) if partial and partial["epoch"] == epoch
                   else None)
        partial = None

        def boundary(fit: EpochFit, epoch: int = epoch, best: dict[str, Any] = best,
                     stale: int = stale) -> None:
            reason = ctx.should_stop()
            if reason or ctx.checkpoint_due():
                checkpoint(epoch, best, stale, partial=fit.state(epoch))
            if reason:
                raise StopRequested(reason)

        fit = train_epoch(runner, inp, config, order, with_graph=with_graph,
                          dates_per_step=fit_plan.dates_per_step,
                          steps=fit_plan.steps_per_epoch, epoch=epoch + 1, epochs=len(plan),
                          resumed=resumed, boundary=boundary)
        step_seconds += fit.step_seconds
        train_seconds = time.perf_counter() - t0

        t1 = time.perf_counter()
        try:
            metrics, preds, watched = validate_epoch(runner, inp, config,
                                                     with_graph=with_graph, epoch=epoch + 1,
                                                     epochs=len(plan))
        except StopRequested:  # the epoch's training is kept; validation reruns
            checkpoint(epoch, best, stale, partial=fit.state(epoch))
            raise
        metrics["train_loss"] = fit.mean_loss
        val_seconds = time.perf_counter() - t1
        epoch_seconds.append(round(time.perf_counter() - t0, 3))
        if watched > best["ic"] + MIN_IMPROVEMENT:
            best, stale = selected(runner, inp, ic=watched, epoch=epoch + 1,
                                   with_graph=with_graph, train_loss=fit.mean_loss), 0
        else:
            stale += 1
        report(epoch + 1, {**metrics, "phase": phase, "lr": runner.lr,
                           "train_s": round(train_seconds, 3),
                           "batch_s": round(fit.batch_seconds, 3),
                           "val_s": round(val_seconds, 3), "samples": fit.samples})
        done = epoch + 1
        checkpoint(epoch + 1, best, stale)
        ctx.log(f"{label}epoch {epoch + 1}/{len(plan)} [{phase}] "
                f"train_loss={metrics['train_loss']:.4f} val_loss={metrics['val_loss']:.4f} "
                f"rank_ic={metrics['rank_ic']:.4f} sharpe={metrics['sharpe']:.3f} "
                f"({epoch_seconds[-1]:.1f}s)")
        if config.patience and stale >= config.patience and epoch + 1 < len(plan):
            ctx.set_attr(STOPPED_EARLY, {"epoch": epoch + 1, "best_rank_ic": best["ic"]})
            break
    metrics, preds, with_graph = score_selected(runner, inp, config, best=best,
                                                metrics=metrics, preds=preds,
                                                with_graph=with_graph, epochs_done=done)
    return Fitted(metrics=metrics, preds=preds, with_graph=with_graph, best=best,
                  epoch_seconds=epoch_seconds, step_seconds=step_seconds, epochs_run=done)


def step_sizes(inp: Inputs, config: TrainConfig) -> tuple[int, int, int]:
    """Dates per step (whole dates up to ``batch_size`` stock-day rows), steps per epoch and
    the rows of a typical step, over the dates the trial reads."""
    stocks_per_date = float(inp.panel.present.sum()) / max(1, len(inp.panel.dates))
    dates_per_step = max(1, int(config.batch_size // max(1.0, stocks_per_date)))
    if config.turnover_weight > 0:  # whole pairs of consecutive dates (epoch_order) per step
        dates_per_step = max(2, dates_per_step - dates_per_step % 2)
    steps_per_epoch = math.ceil(len(inp.train_dates) / dates_per_step)
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    return dates_per_step, steps_per_epoch, int(math.ceil(stocks_per_date * dates_per_step))


def selected(runner: StepRunner, inp: Inputs, *, ic: float, epoch: int, with_graph: bool,
             train_loss: float = float("nan")) -> dict[str, Any]:
    """The model selection state of a new best epoch; its weights are kept (on the CPU) only
    when selection dates can pick an earlier epoch than the last."""
    weights = ({k: v.detach().cpu().clone() for k, v in runner.module.state_dict().items()}
               if len(inp.select_dates) else None)
    return {"ic": ic, "epoch": epoch, "with_graph": with_graph, "weights": weights,
            "train_loss": train_loss}


def validate_epoch(runner: StepRunner, inp: Inputs, config: TrainConfig, *, with_graph: bool,
                   epoch: int | None = None, epochs: int | None = None,
                   ) -> tuple[dict[str, float], dict[str, np.ndarray], float]:
    """Validation metrics and predictions, and the RankIC that selects epochs and drives
    patience.

    That RankIC is the selection dates' when there are any, so the validation dates that score
    the trial never choose its epoch; without them it is the validation RankIC (documented in
    the README).
    """
    metrics, preds = validate(runner, inp.panel, inp.y_z, inp.graphs, inp.val_dates, config,
                              with_graph=with_graph, h_idx=inp.h_idx, epoch=epoch,
                              epochs=epochs)
    if not len(inp.select_dates):
        return metrics, preds, metrics["rank_ic"]
    watched = validate(runner, inp.panel, inp.y_z, inp.graphs, inp.select_dates, config,
                       with_graph=with_graph, h_idx=inp.h_idx)[0]["rank_ic"]
    metrics["select_rank_ic"] = watched
    return metrics, preds, watched


def score_selected(runner: StepRunner, inp: Inputs, config: TrainConfig, *,
                   best: dict[str, Any], metrics: dict[str, float],
                   preds: dict[str, np.ndarray], with_graph: bool, epochs_done: int
                   ) -> tuple[dict[str, float], dict[str, np.ndarray], bool]:
    """The scored model's metrics, predictions and graph use: the selected epoch's weights
    when epoch selection picked an earlier one, else the last epoch's (re-scored when the run
    was resumed after its last epoch and so validated nothing)."""
    if best["weights"] is not None and (best["epoch"] != epochs_done or not metrics):
        runner.module.load_state_dict(best["weights"])
        train_loss = best.get("train_loss", float("nan"))
        metrics, preds = validate(runner, inp.panel, inp.y_z, inp.graphs, inp.val_dates, config,
                                  with_graph=best["with_graph"], h_idx=inp.h_idx)
        metrics["train_loss"] = train_loss if train_loss is not None else float("nan")
        return metrics, preds, best["with_graph"]
    if not metrics:
        metrics, preds = validate(runner, inp.panel, inp.y_z, inp.graphs, inp.val_dates, config,
                                  with_graph=with_graph, h_idx=inp.h_idx)
        metrics["train_loss"] = float("nan")
    return metrics, preds, with_graph


def validate(runner: StepRunner, panel: Panel, y_z: torch.Tensor, graphs: DateGraphs,
             val_dates: np.ndarray, config: TrainConfig, *, with_graph: bool, h_idx: int,
             epoch: int | None = None, epochs: int | None = None,
             ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics and predictions of the model on ``val_dates``.

    Dates are packed into forward passes of at most the trial's current micro-batch (the
    training step's, after any out-of-memory halving), and an out-of-memory error here halves
    it as in training (``StepRunner.evaluate``). A date is only cut when it alone exceeds the
    micro-batch; its graph edges across the cut are then dropped, as in training.
    """
    runner.module.eval()
    cols: dict[str, list[np.ndarray]] = {"date": [], "code": [], "pred": [], "target": []}
    losses, weights = [], []
    progress = phase_of(runner.ctx, "validate", total=len(val_dates), unit="dates",
                        epoch=epoch, epochs=epochs)
    for dates in pack_dates(panel, val_dates, lambda: runner.micro_batch):
        if runner.ctx is not None and (reason := runner.ctx.should_stop()):
            raise StopRequested(reason)
        b = make_batch(panel, y_z, graphs, dates, lookback=config.lookback,
                       with_graph=with_graph)

        def forward(s: slice, b: Batch = b) -> torch.Tensor:
            part = b.sub(s)
            x, e, w = runner.to_device(part.x, part.edges, part.weight)
            out = runner.model(x, e if with_graph else None, w if with_graph else None)
            return out["point"].float().cpu()  # (n, H)

        point = torch.cat(runner.evaluate(len(b), forward))  # (N, H)
        losses.append(float(scoring_loss({"point": point}, b)))
        weights.append(len(dates))
        progress.advance(len(dates))
        cols["pred"].append(point[:, h_idx].numpy())
        cols["target"].append(b.y_raw[:, h_idx].numpy())
        cols["date"].append(panel.dates[b.date[b.group.numpy()]])
        cols["code"].append(np.asarray(panel.codes, dtype=object)[b.stock.numpy()])
    progress.close()
    preds = {k: np.concatenate(v) for k, v in cols.items()}
    keep = np.isfinite(preds["target"])
    preds = {k: v[keep] for k, v in preds.items()}
    # An h-day target: Sharpe on non-overlapping h-day periods, annualised with sqrt(252 / h).
    metrics = panel_metrics(preds["date"], preds["pred"], preds["target"], codes=preds["code"],
                            scoring=config.scoring)
    metrics["val_loss"] = float(np.average(losses, weights=weights))
    return metrics, preds
