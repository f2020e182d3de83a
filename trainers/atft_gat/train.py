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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cache import FeatureCache
from trainers import attrs
from trainers.atft_gat.batch import Batch, make_batch, pack_dates
from trainers.atft_gat.config import TrainConfig
from trainers.atft_gat.data import Panel, cache_panel, standardise, study_split
from trainers.atft_gat.graph import DateGraphs, GraphConfig, build_graphs
from trainers.atft_gat.leakage import check_features
from trainers.atft_gat.loss import batch_loss, scoring_loss
from trainers.atft_gat.model import ATFTGATFAN
from trainers.atft_gat.outputs import save_model, write_predictions
from trainers.atft_gat.prepare import (
    Inputs,
    cache_source,
    carve_selection,
    coverage,
    leak_scores,
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
    record_feature_scores,
    record_run,
    record_split,
    record_timing,
)
from trainers.context import TrialContext
from trainers.errors import UserError
from trainers.metrics import panel_metrics
from trainers.progress import phase_of
from trainers.runtime import (
    StepRunner,
    release_host_memory,
    resume,
    save_checkpoint,
    seed_everything,
    select_device,
)

# What predict.py, the tests and the scripts import from the recipe; several of these moved to
# the sibling modules and are re-exported here.
__all__ = ["Batch", "cache_panel", "cache_source", "epoch_batches", "graph_summary",
           "load_features", "load_graphs", "make_batch", "no_graphs", "pack_dates",
           "prepare_inputs", "train", "validate", "zscore_targets"]

# An epoch's selection RankIC must beat the best so far by more than this to count as
# better: float noise between two equal epochs is not progress.
MIN_IMPROVEMENT = 1e-6


# -- data -----------------------------------------------------------------------------------
def load_graphs(fc: FeatureCache, panel: Panel, config: TrainConfig,
                ctx: TrialContext | None = None) -> DateGraphs:
    """Per-date correlation graphs of ``graph_k`` in-edges, cached beside the features.

    The graph is built once for ``graph_k_max`` in-edges and stored under the settings that
    change it (window, threshold, min_periods, source, k_max), not graph_k: every trial of a
    study reads that one sidecar and keeps the first ``graph_k`` edges of every stock (a
    prefix, see ``DateGraphs.top``), so a sampled graph_k never triggers a rebuild. It is
    built on the training device when that is a GPU. With the graph in use, a graph without a
    single edge is a UserError, never a silently graph-less run.
    """
    gcfg = GraphConfig(window=config.graph_window, k=config.effective_graph_k_max,
                       threshold=config.graph_threshold)
    # The dates it covers are part of the key: a trial's graph stops at its last validation
    # date, evaluation's covers the test period too.
    params = {"window": gcfg.window, "threshold": gcfg.threshold,
              "min_periods": gcfg.min_periods, "source": config.graph_source, "k_max": gcfg.k,
              "dates": [str(panel.dates[0]), str(panel.dates[-1]), len(panel.dates)]}
    # Mapped, not read: every worker of the host shares one copy in the page cache.
    cached = fc.load_sidecar("graphs", params=params, mmap=True)
    if cached is not None:
        graphs = DateGraphs(src=cached["src"], dst=cached["dst"], weight=cached["weight"],
                            offsets=cached["offsets"])
    else:
        if config.graph_source not in panel.feature_names:
            raise UserError(f"graph_source {config.graph_source!r} is not a feature of the "
                            f"panel; features: {', '.join(panel.feature_names)}")
        col = panel.feature_names.index(config.graph_source)
        returns = panel.x[:, :, col].numpy()  # (D, S), raw (unstandardised)
        returns = np.where(panel.present.numpy(), returns, np.nan)
        device = select_device(config.device)
        with phase_of(ctx, "graph", total=len(panel.dates), unit="dates") as progress:
            graphs = build_graphs(returns, gcfg, present=panel.present.numpy(),
                                  device=device if device.type == "cuda" else "cpu",
                                  spill_dir=fc.path, on_dates=progress.advance)
        fc.save_sidecar("graphs", {"src": graphs.src, "dst": graphs.dst,
                                   "weight": graphs.weight, "offsets": graphs.offsets},
                        params=params)
        stored = fc.load_sidecar("graphs", params=params, mmap=True)
        if stored is not None:  # the built arrays go; the mapped file stays
            graphs = DateGraphs(src=stored["src"], dst=stored["dst"],
                                weight=stored["weight"], offsets=stored["offsets"])
    graphs = graphs.prefix(config.graph_k)
    if config.use_graph and graphs.n_edges == 0:
        n_dates, n_stocks = panel.present.shape
        raise UserError(
            f"the correlation graph has no edges on any of {n_dates} dates x {n_stocks} "
            f"stocks (graph_source {config.graph_source!r}, graph_window "
            f"{config.graph_window}, min_periods {gcfg.min_periods}, graph_threshold "
            f"{config.graph_threshold}); lower graph_threshold, check that the source has "
            "returns, or set use_graph = false")
    return graphs


def prepare_inputs(config: TrainConfig, ctx: TrialContext) -> Inputs:
    """Steps 1-2: the cached panel, the study's date split, the graphs, the leakage guard
    (its scores are recorded before it may refuse a feature), standardised features and
    z-scored targets."""
    fc = load_features(config, ctx.cache_dir)
    panel = cache_panel(fc, missing_indicator=config.missing_indicator)
    t_graph = time.perf_counter()
    n_dates = panel.x.shape[0]
    # One split for the whole study: it depends on the panel and the data settings only.
    dsplit = study_split(config, panel.dates)
    source_dates = panel.dates
    # From here on the trial sees nothing after its last validation label: the test period
    # (and the purge before it) is not in the panel at all.
    panel = panel.head(dsplit.read_until + 1).lagged(config.execution_lag).head(
        int(dsplit.val[-1]) + 1)
    train_dates = dsplit.train[dsplit.train >= config.lookback - 1]
    if len(train_dates) == 0:
        raise UserError(f"the panel's {n_dates} dates leave no training date with a full "
                        f"lookback of {config.lookback} dates; use more dates or a shorter "
                        "lookback")
    # A model without the graph block never reads a graph: none is built.
    graphs = (load_graphs(fc, panel, config, ctx) if config.use_graph
              else no_graphs(len(panel.dates)))
    release_host_memory()  # a graph build's freed per-block arrays (see release_host_memory)
    graph_seconds = time.perf_counter() - t_graph
    h_idx = list(config.horizons).index(config.metric_horizon)
    scores = leak_scores(fc, panel, train_dates, config)
    record_feature_scores(ctx, scores)
    check_features(scores, threshold=config.leak_threshold,
                   allow=config.allow_features)
    release_host_memory()  # and the guard's ranks
    panel = standardise(panel, train_dates, moments=fc.feature_moments(train_dates))
    y_z = zscore_targets(panel.y)
    # Train only on dates whose scored horizon has labels.
    train_dates = train_dates[torch.isfinite(y_z[train_dates, :, h_idx]).any(dim=1).numpy()]
    train_dates, select_dates = carve_selection(train_dates, config)
    return Inputs(fc=fc, split=dsplit, source_dates=source_dates, panel=panel, y_z=y_z,
                  graphs=graphs, train_dates=train_dates, select_dates=select_dates,
                  val_dates=dsplit.val, h_idx=h_idx, graph_seconds=graph_seconds)


# -- batches --------------------------------------------------------------------------------
def epoch_batches(panel: Panel, y_z: torch.Tensor, graphs: DateGraphs, order: np.ndarray, *,
                  dates_per_step: int, steps: int, lookback: int, with_graph: bool,
                  prefetch: bool) -> Iterator[tuple[Batch, float]]:
    """The epoch's batches in ``order``, each with the seconds the loop waited for it.

    With ``prefetch`` the next batch is built in a background thread while the caller trains
    on the current one, so on a GPU host the CPU-side assembly hides behind the kernels; the
    batches and their order are the same either way.
    """
    chunks = [np.sort(order[i * dates_per_step:(i + 1) * dates_per_step]) for i in range(steps)]
    chunks = [c for c in chunks if len(c)]

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


def train_epoch(runner: StepRunner, inp: Inputs, config: TrainConfig, order: np.ndarray, *,
                with_graph: bool, dates_per_step: int, steps: int, epoch: int | None = None,
                epochs: int | None = None) -> EpochFit:
    """Step 3 for one epoch: ``steps`` runtime steps over the dates of ``order``."""
    runner.module.train()
    fit = EpochFit()
    progress = phase_of(runner.ctx, "train", total=min(steps, -(-len(order) // dates_per_step)),
                        unit="steps", epoch=epoch, epochs=epochs)
    # On a GPU the next batch is assembled on the CPU while this one trains.
    for batch, waited in epoch_batches(inp.panel, inp.y_z, inp.graphs, order,
                                       dates_per_step=dates_per_step, steps=steps,
                                       lookback=config.lookback, with_graph=with_graph,
                                       prefetch=runner.device.type == "cuda"):
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
    dates_per_step, steps_per_epoch, rows_per_step = step_sizes(inp, config)
    plan = config.phase_plan()
    model = ATFTGATFAN(config.model_config(), n_features=inp.panel.n_inputs)
    # The runtime's first micro-batch covers a whole step, so dates are only cut into chunks
    # after an out-of-memory error, never by default.
    runner = StepRunner(model, config.runtime(), ctx=ctx,
                        total_steps=steps_per_epoch * len(plan),
                        batch_size=max(config.batch_size, rows_per_step))
    base_lrs = list(runner.scheduler.base_lrs)
    ctx.set_attr(attrs.N_PARAMS, sum(p.numel() for p in model.parameters()))
    ctx.set_attr(DATES_PER_STEP, dates_per_step)
    # best: the model selection state (epoch, score and weights of the best epoch so far).
    start_epoch, saved = resume(runner, ctx, config=config, extra={
        "best": {"ic": -math.inf, "epoch": 0, "weights": None}, "stale": 0})
    best, stale = saved["best"], saved["stale"]
    record_timing(ctx, setup_seconds=time.perf_counter() - t_setup,
                  graph_seconds=inp.graph_seconds)

    # 3-5. per epoch: train, validate, select the best epoch, report, checkpoint
    metrics: dict[str, float] = {}
    preds: dict[str, np.ndarray] = {}
    epoch_seconds: list[float] = []
    step_seconds: list[float] = []
    with_graph = plan[-1] != "baseline"  # what a run resumed after its last epoch scores
    for epoch in range(start_epoch, len(plan)):
        t0 = time.perf_counter()
        phase = plan[epoch]
        scale = config.finetune_lr_scale if phase == "finetune" else 1.0
        runner.scheduler.base_lrs = [lr * scale for lr in base_lrs]
        with_graph = phase != "baseline"
        # Shuffle order depends only on (seed, epoch): a resumed run replays it exactly.
        order = np.random.default_rng([ctx.seed, epoch]).permutation(inp.train_dates)
        fit = train_epoch(runner, inp, config, order, with_graph=with_graph,
                          dates_per_step=dates_per_step, steps=steps_per_epoch,
                          epoch=epoch + 1, epochs=len(plan))
        step_seconds += fit.step_seconds
        train_seconds = time.perf_counter() - t0

        t1 = time.perf_counter()
        metrics, preds, watched = validate_epoch(runner, inp, config, with_graph=with_graph,
                                                 epoch=epoch + 1, epochs=len(plan))
        metrics["train_loss"] = fit.mean_loss
        val_seconds = time.perf_counter() - t1
        epoch_seconds.append(round(time.perf_counter() - t0, 3))
        if watched > best["ic"] + MIN_IMPROVEMENT:
            best, stale = selected(runner, inp, ic=watched, epoch=epoch + 1,
                                   with_graph=with_graph), 0
        else:
            stale += 1
        ctx.report(epoch + 1, {**metrics, "phase": phase, "lr": runner.lr,
                               "train_s": round(train_seconds, 3),
                               "batch_s": round(fit.batch_seconds, 3),
                               "val_s": round(val_seconds, 3), "samples": fit.samples})
        save_checkpoint(runner, ctx, config=config, epoch=epoch + 1,
                        extra={"best": best, "stale": stale})
        ctx.log(f"epoch {epoch + 1}/{len(plan)} [{phase}] train_loss={metrics['train_loss']:.4f}"
                f" val_loss={metrics['val_loss']:.4f} rank_ic={metrics['rank_ic']:.4f} "
                f"sharpe={metrics['sharpe']:.3f} ({epoch_seconds[-1]:.1f}s)")
        if config.patience and stale >= config.patience and epoch + 1 < len(plan):
            ctx.set_attr(STOPPED_EARLY, {"epoch": epoch + 1, "best_rank_ic": best["ic"]})
            break

    # the scored model (step 5), its predictions and the run's record
    metrics, preds, with_graph = score_selected(runner, inp, config, ctx=ctx, best=best,
                                                metrics=metrics, preds=preds,
                                                with_graph=with_graph)
    record_run(ctx, selected_epoch=best["epoch"] if len(inp.select_dates) else None,
               epoch_seconds=epoch_seconds, step_seconds=step_seconds,
               final_batch_size=runner.micro_batch)
    write_predictions(ctx.output_dir / "predictions.parquet", preds)
    save_model(ctx.output_dir / "model.pt", runner, config, panel=inp.panel,
               with_graph=with_graph)
    return metrics


def step_sizes(inp: Inputs, config: TrainConfig) -> tuple[int, int, int]:
    """Dates per step (whole dates up to ``batch_size`` stock-day rows), steps per epoch and
    the rows of a typical step, over the dates the trial reads."""
    stocks_per_date = float(inp.panel.present.sum()) / max(1, len(inp.panel.dates))
    dates_per_step = max(1, int(config.batch_size // max(1.0, stocks_per_date)))
    steps_per_epoch = math.ceil(len(inp.train_dates) / dates_per_step)
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    return dates_per_step, steps_per_epoch, int(math.ceil(stocks_per_date * dates_per_step))


def selected(runner: StepRunner, inp: Inputs, *, ic: float, epoch: int, with_graph: bool
             ) -> dict[str, Any]:
    """The model selection state of a new best epoch; its weights are kept (on the CPU) only
    when selection dates can pick an earlier epoch than the last."""
    weights = ({k: v.detach().cpu().clone() for k, v in runner.module.state_dict().items()}
               if len(inp.select_dates) else None)
    return {"ic": ic, "epoch": epoch, "with_graph": with_graph, "weights": weights}


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


def score_selected(runner: StepRunner, inp: Inputs, config: TrainConfig, *, ctx: TrialContext,
                   best: dict[str, Any], metrics: dict[str, float],
                   preds: dict[str, np.ndarray], with_graph: bool
                   ) -> tuple[dict[str, float], dict[str, np.ndarray], bool]:
    """The scored model's metrics, predictions and graph use: the selected epoch's weights
    when epoch selection picked an earlier one, else the last epoch's (re-scored when the run
    was resumed after its last epoch and so validated nothing)."""
    if best["weights"] is not None and (best["epoch"] != len(ctx.history) or not metrics):
        runner.module.load_state_dict(best["weights"])
        train_loss = ctx.history[best["epoch"] - 1].get("train_loss", float("nan"))
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
                            horizon=config.metric_horizon, cost_bps=config.cost_bps,
                            periods_per_year=config.periods_per_year)
    metrics["val_loss"] = float(np.average(losses, weights=weights))
    return metrics, preds
