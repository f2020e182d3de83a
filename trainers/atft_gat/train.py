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
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from cache import CacheSpec, FeatureCache, load_or_build
from losses import rank_preserving_loss
from trainers.atft_gat.config import TrainConfig
from trainers.atft_gat.data import Panel, cache_panel, date_split, standardise
from trainers.atft_gat.graph import DateGraphs, GraphConfig, build_graphs
from trainers.atft_gat.leakage import SIDECAR, check_features, guard_dates, panel_rank_ic
from trainers.atft_gat.model import ATFTGATFAN, pinball_loss
from trainers.config import to_mapping
from trainers.context import TrialContext, atomic_write_bytes, check_resumable
from trainers.errors import UserError
from trainers.metrics import panel_metrics
from trainers.runtime import StepRunner, release_host_memory, seed_everything, select_device

# Below this share of the source's labelled rows reaching the loss, the data is unusable.
MIN_ROWS_KEPT = 0.5
# Features whose leakage-guard RankIC is kept as a trial attr (the largest in magnitude).
LISTED_SCORES = 10
# Per-date z-scoring of targets needs a few stocks to estimate a spread.
MIN_STOCKS_FOR_ZSCORE = 3


# -- data ---------------------------------------------------------------------------------
def cache_source(config: TrainConfig) -> str:
    if config.source == "synthetic":
        return (f"synthetic:n_stocks={config.n_stocks},n_dates={config.n_dates},"
                f"seed={config.market_seed},difficulty={config.market_difficulty}")
    return config.source


def load_features(config: TrainConfig, cache_dir: Path) -> FeatureCache:
    spec = CacheSpec(feature_columns=config.features or None,
                     target_columns=tuple(f"ret_{h}d" for h in config.horizons),
                     nan_policy=config.nan_policy)
    return load_or_build(cache_source(config), Path(config.cache_dir or cache_dir), spec)


def load_graphs(fc: FeatureCache, panel: Panel, config: TrainConfig) -> DateGraphs:
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
        graphs = build_graphs(returns, gcfg, present=panel.present.numpy(),
                              device=device if device.type == "cuda" else "cpu",
                              spill_dir=fc.path)
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


def leak_scores(fc: FeatureCache, panel: Panel, train_dates: np.ndarray, h_idx: int,
                config: TrainConfig) -> dict[str, float]:
    """Each feature's mean per-date RankIC with the scored target on (a sample of) the
    training dates, from the cache's sidecar when an earlier trial measured it."""
    dates = guard_dates(train_dates)
    params = {"target": panel.target_names[h_idx], "lag": config.execution_lag,
              "dates": [str(panel.dates[d]) for d in dates]}
    stored = fc.load_sidecar(SIDECAR, params=params)
    if stored is None:
        values = panel_rank_ic(panel.x, panel.y[:, :, h_idx], panel.present, dates)
        fc.save_sidecar(SIDECAR, {"rank_ic": values}, params=params)
    else:
        values = stored["rank_ic"]
    return {name: round(float(v), 6) for name, v in zip(panel.feature_names, values,
                                                        strict=True)}


def no_graphs(n_dates: int) -> DateGraphs:
    """An edgeless graph of ``n_dates`` dates (for models without the graph block)."""
    empty = np.zeros(0, dtype=np.int32)
    return DateGraphs(src=empty, dst=empty, weight=np.zeros(0, dtype=np.float32),
                      offsets=np.zeros(n_dates + 1, dtype=np.int64))


def graph_summary(graphs: DateGraphs, config: TrainConfig) -> dict[str, Any]:
    """The trial attr ``graph``: k used and built, and edges per date (all dates counted)."""
    per_date = graphs.edges_per_date()
    return {"k": config.graph_k, "k_max": config.effective_graph_k_max,
            "edges_per_date_mean": round(float(per_date.mean()), 1) if len(per_date) else 0.0,
            "edges_per_date_min": int(per_date.min()) if len(per_date) else 0,
            "edges_per_date_max": int(per_date.max()) if len(per_date) else 0,
            "dates_without_edges": int((per_date == 0).sum())}


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


# -- batches --------------------------------------------------------------------------------
@dataclass
class Batch:
    """Several dates' cross-sections as one disjoint graph.

    x: (N, L, F) windows; y: (N, H) z-scored targets (NaN = no label); y_raw: (N, H) returns;
    group: (N,) date slot 0..G-1 (contiguous); stock: (N,) stock index; date: (G,) date index;
    edges: (2, E) node ids; weight: (E,).
    """

    x: torch.Tensor
    y: torch.Tensor
    y_raw: torch.Tensor
    group: torch.Tensor
    stock: torch.Tensor
    date: np.ndarray
    edges: torch.Tensor
    weight: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def sub(self, s: slice) -> Batch:
        """The nodes in ``s`` and the edges among them (used when a step is micro-batched)."""
        lo, hi = s.start or 0, s.stop if s.stop is not None else len(self)
        if lo == 0 and hi == len(self):
            return self
        keep = (self.edges[0] >= lo) & (self.edges[0] < hi) & (self.edges[1] >= lo) & (
            self.edges[1] < hi)
        group = self.group[lo:hi]
        first = int(group[0]) if len(group) else 0
        return Batch(self.x[lo:hi], self.y[lo:hi], self.y_raw[lo:hi], group - first,
                     self.stock[lo:hi], self.date, self.edges[:, keep] - lo, self.weight[keep])


def make_batch(panel: Panel, y_z: torch.Tensor, graphs: DateGraphs, dates: np.ndarray, *,
               lookback: int, with_graph: bool) -> Batch:
    xs, ys, yr, groups, stocks, edges, weights = [], [], [], [], [], [], []
    offset = 0
    lookup = np.full(panel.present.shape[1], -1, dtype=np.int64)
    for g, d in enumerate(dates):
        window, idx = panel.window(int(d), lookback)  # (n, L, F), (n,) stock ids
        idx_np = idx.numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
        n = len(idx_np)
        xs.append(window)
        ys.append(y_z[int(d), idx_np])
        yr.append(panel.y[int(d), idx_np])
        groups.append(torch.full((n,), g, dtype=torch.long))
        stocks.append(torch.as_tensor(idx_np, dtype=torch.long))
        if with_graph:
            src, dst, w = graphs.edges(int(d))
            lookup[idx_np] = np.arange(n) + offset
            s_node, d_node = lookup[src], lookup[dst]
            ok = (s_node >= 0) & (d_node >= 0)
            edges.append(np.stack([s_node[ok], d_node[ok]]))
            weights.append(w[ok])
            lookup[idx_np] = -1
        offset += n
    if with_graph and edges:
        e = torch.from_numpy(np.concatenate(edges, axis=1).astype(np.int64))
        w = torch.from_numpy(np.concatenate(weights).astype(np.float32))
    else:
        e, w = torch.zeros((2, 0), dtype=torch.long), torch.zeros(0)
    return Batch(torch.cat(xs), torch.cat(ys), torch.cat(yr), torch.cat(groups),
                 torch.cat(stocks), np.asarray(dates), e, w)


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


def per_date(values: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """(N, ...) node values -> (G, max_n, ...) per-date rows padded with NaN."""
    n_groups = int(group.max()) + 1 if len(group) else 0
    counts = torch.bincount(group, minlength=n_groups)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(len(group), device=group.device) - starts[group]
    out = values.new_full((n_groups, int(counts.max()) if n_groups else 0, *values.shape[1:]),
                          float("nan"))
    out[group, pos] = values
    return out


def scoring_loss(out: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
    """The ``val_loss`` objective: Huber (delta 1) on per-date z-scored targets, all horizons.

    Deliberately independent of the searched loss weights (rank_weight, ic_weight, ...), so
    that val_loss compares trials with each other; the training loss does not.
    """
    point = per_date(out["point"].float(), batch.group)  # (G, n, H)
    target = per_date(batch.y, batch.group)
    valid = torch.isfinite(target)
    err = torch.nn.functional.huber_loss(torch.where(valid, point, 0.0),
                                         torch.where(valid, target, 0.0), reduction="none",
                                         delta=1.0)
    per_date_loss = (err * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1)  # (G, H)
    has = valid.any(dim=1)
    return per_date_loss[has].mean()


def batch_loss(out: dict[str, torch.Tensor], batch: Batch, config: TrainConfig
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """The per-date training loss of one batch (see the module docstring, step 4)."""
    point = per_date(out["point"].float(), batch.group)  # (G, n, H)
    target = per_date(batch.y, batch.group)  # (G, n, H)
    total = point.new_zeros(())
    parts = {"base": 0.0, "rank": 0.0, "ic": 0.0}
    n_h = point.shape[-1]
    for h in range(n_h):
        loss_h, parts_h = rank_preserving_loss(
            point[..., h], target[..., h], mask=torch.isfinite(target[..., h]),
            rank_weight=config.rank_weight, ic_weight=config.ic_weight, base=config.base_loss,
            huber_delta=config.huber_delta, strength=config.rank_strength)
        total = total + loss_h / n_h
        for k in parts:
            parts[k] += float(parts_h[k]) / n_h
    if config.quantile_weight > 0:
        q = pinball_loss(out["quantiles"].float(), batch.y, config.quantiles)
        total = total + config.quantile_weight * q
    return total, parts


# -- the recipe ----------------------------------------------------------------------------
def train(config: TrainConfig, ctx: TrialContext) -> dict[str, float]:
    t_setup = time.perf_counter()
    seed_everything(ctx.seed)

    # 1-2. data, split, graphs
    fc = load_features(config, ctx.cache_dir)
    panel = cache_panel(fc, missing_indicator=config.missing_indicator)
    t_graph = time.perf_counter()
    n_dates = panel.x.shape[0]
    # One split for the whole study: it depends on the panel and the data settings only.
    dsplit = date_split(n_dates, val_fraction=config.val_fraction,
                        test_fraction=config.test_fraction, purge=config.purge,
                        horizon=max(config.horizons), lag=config.execution_lag)
    full_dates = panel.dates
    # From here on the trial sees nothing after its last validation label: the test period
    # (and the purge before it) is not in the panel at all.
    panel = panel.head(dsplit.read_until + 1).lagged(config.execution_lag).head(
        int(dsplit.val[-1]) + 1)
    val_dates = dsplit.val
    train_dates = dsplit.train[dsplit.train >= config.lookback - 1]
    if len(train_dates) == 0:
        raise UserError(f"the panel's {n_dates} dates leave no training date with a full "
                        f"lookback of {config.lookback} dates; use more dates or a shorter "
                        "lookback")
    # A model without the graph block never reads a graph: none is built.
    graphs = load_graphs(fc, panel, config) if config.use_graph else no_graphs(len(panel.dates))
    release_host_memory()  # a graph build's freed per-block arrays (see release_host_memory)
    graph_seconds = time.perf_counter() - t_graph
    h_idx = list(config.horizons).index(config.metric_horizon)
    scores = leak_scores(fc, panel, train_dates, h_idx, config)
    ctx.set_attr("feature_rank_ic", dict(sorted(scores.items(), key=lambda kv: -abs(kv[1]))[
        :LISTED_SCORES]))
    check_features(scores, target=panel.target_names[h_idx], threshold=config.leak_threshold,
                   allow=config.allow_features)
    release_host_memory()  # and the guard's ranks
    panel = standardise(panel, train_dates, moments=fc.feature_moments(train_dates))
    y_z = zscore_targets(panel.y)
    # Train only on dates whose scored horizon has labels.
    train_dates = train_dates[torch.isfinite(y_z[train_dates, :, h_idx]).any(dim=1).numpy()]
    train_dates, select_dates = carve_selection(train_dates, config)
    last_fit = select_dates[-1] if len(select_dates) else train_dates[-1]
    split = {**dsplit.ranges(full_dates),
             "fit": [str(panel.dates[train_dates[0]]), str(panel.dates[train_dates[-1]])],
             "purge_dates": int(val_dates[0] - last_fit - 1)}
    if len(select_dates):
        split["select"] = [str(panel.dates[select_dates[0]]), str(panel.dates[select_dates[-1]])]
    ctx.set_attr("split", split)
    ctx.set_attr("date_split", dsplit.ranges(full_dates))  # the study's, the same every trial
    ctx.set_attr("data", {"rows": int(fc.n_rows), "dates": n_dates,
                          **coverage(fc, panel, np.concatenate([train_dates, select_dates,
                                                                val_dates]), h_idx,
                                   lag=config.execution_lag),
                          "stocks": int(panel.x.shape[1]), "features": list(panel.feature_names),
                          "train_dates": len(train_dates), "val_dates": len(val_dates),
                          "test_dates": len(dsplit.test),
                          "cache_key": fc.key,
                          "edges_per_date": round(graphs.n_edges / max(1, graphs.n_dates), 1)})
    if config.use_graph:
        ctx.set_attr("graph", graph_summary(graphs, config))

    # 3. model and runtime
    # Over the dates the trial reads (the panel was cut after its last validation label).
    stocks_per_date = float(panel.present.sum()) / max(1, len(panel.dates))
    dates_per_step = max(1, int(config.batch_size // max(1.0, stocks_per_date)))
    steps_per_epoch = math.ceil(len(train_dates) / dates_per_step)
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    plan = config.phase_plan()
    model = ATFTGATFAN(config.model_config(), n_features=panel.n_inputs)
    # The runtime's first micro-batch covers a whole step, so dates are only cut into chunks
    # after an out-of-memory error, never by default.
    rows_per_step = int(math.ceil(stocks_per_date * dates_per_step))
    runner = StepRunner(model, config.runtime_config(), ctx=ctx,
                        total_steps=steps_per_epoch * len(plan),
                        batch_size=max(config.batch_size, rows_per_step))
    base_lrs = list(runner.scheduler.base_lrs)
    ctx.set_attr("n_params", sum(p.numel() for p in model.parameters()))
    ctx.set_attr("dates_per_step", dates_per_step)

    # best: the model selection state (epoch, score and weights of the best epoch so far).
    start_epoch, stale = 0, 0
    best: dict[str, Any] = {"ic": -math.inf, "epoch": 0, "weights": None}
    state = ctx.restore()
    if state is not None:
        check_resumable(state, config, ctx)
        runner.load_state_dict(state)
        start_epoch = int(state["epoch"])
        best, stale = state["best"], state["stale"]
    setup_seconds = time.perf_counter() - t_setup
    ctx.set_attr("timing", {"setup_s": round(setup_seconds, 3),
                            "graph_s": round(graph_seconds, 3),
                            "data_s": round(setup_seconds - graph_seconds, 3)})

    metrics: dict[str, float] = {}
    preds: dict[str, np.ndarray] = {}
    epoch_seconds: list[float] = []
    step_seconds: list[float] = []  # optimiser steps of this run, batch assembly excluded
    for epoch in range(start_epoch, len(plan)):
        t0 = time.perf_counter()
        phase = plan[epoch]
        scale = config.finetune_lr_scale if phase == "finetune" else 1.0
        runner.scheduler.base_lrs = [lr * scale for lr in base_lrs]
        with_graph = phase != "baseline"
        # Shuffle order depends only on (seed, epoch): a resumed run replays it exactly.
        order = np.random.default_rng([ctx.seed, epoch]).permutation(train_dates)
        runner.module.train()
        losses, batch_seconds, samples = [], 0.0, 0
        # On a GPU the next batch is assembled on the CPU while this one trains.
        for batch, waited in epoch_batches(panel, y_z, graphs, order,
                                           dates_per_step=dates_per_step, steps=steps_per_epoch,
                                           lookback=config.lookback, with_graph=with_graph,
                                           prefetch=runner.device.type == "cuda"):
            batch_seconds += waited

            def loss_fn(s: slice, batch: Batch = batch, with_graph: bool = with_graph
                        ) -> torch.Tensor:
                b = batch.sub(s)
                x, y, e, w = runner.to_device(b.x, b.y, b.edges, b.weight)
                b = Batch(x, y, b.y_raw, runner.to_device(b.group), b.stock, b.date, e, w)
                out = runner.model(b.x, b.edges if with_graph else None,
                                   b.weight if with_graph else None)
                return batch_loss(out, b, config)[0]

            t_step = time.perf_counter()
            losses.append(runner.step(len(batch), loss_fn))
            step_seconds.append(time.perf_counter() - t_step)
            samples += len(batch)
        train_seconds = time.perf_counter() - t0

        # 5. validation
        t1 = time.perf_counter()
        metrics, preds = validate(runner, panel, y_z, graphs, val_dates, config,
                                  with_graph=with_graph, h_idx=h_idx)
        metrics["train_loss"] = float(np.mean(losses)) if losses else float("nan")
        # Model selection and patience look at the selection dates when there are any, so the
        # validation dates that score the trial never choose its epoch; without them patience
        # watches validation RankIC (documented in the README).
        if len(select_dates):
            watched = validate(runner, panel, y_z, graphs, select_dates, config,
                               with_graph=with_graph, h_idx=h_idx)[0]["rank_ic"]
            metrics["select_rank_ic"] = watched
        else:
            watched = metrics["rank_ic"]
        val_seconds = time.perf_counter() - t1
        epoch_seconds.append(round(time.perf_counter() - t0, 3))
        if watched > best["ic"] + 1e-6:
            stale = 0
            best = {"ic": watched, "epoch": epoch + 1, "with_graph": with_graph,
                    "weights": ({k: v.detach().cpu().clone()
                                 for k, v in runner.module.state_dict().items()}
                                if len(select_dates) else None)}
        else:
            stale += 1
        ctx.report(epoch + 1, {**metrics, "phase": phase, "lr": runner.lr,
                               "train_s": round(train_seconds, 3),
                               "batch_s": round(batch_seconds, 3),
                               "val_s": round(val_seconds, 3), "samples": samples})
        ctx.checkpoint({**runner.state_dict(), "config": to_mapping(config),
                        "best": best, "stale": stale}, epoch=epoch + 1)
        ctx.log(f"epoch {epoch + 1}/{len(plan)} [{phase}] train_loss={metrics['train_loss']:.4f}"
                f" val_loss={metrics['val_loss']:.4f} rank_ic={metrics['rank_ic']:.4f} "
                f"sharpe={metrics['sharpe']:.3f} ({epoch_seconds[-1]:.1f}s)")
        if config.patience and stale >= config.patience and epoch + 1 < len(plan):
            ctx.set_attr("stopped_early", {"epoch": epoch + 1, "best_rank_ic": best["ic"]})
            break

    scored_with_graph = with_graph if metrics else plan[-1] != "baseline"
    if best["weights"] is not None and (best["epoch"] != len(ctx.history) or not metrics):
        # Score the selected epoch's weights, not the last epoch's.
        runner.module.load_state_dict(best["weights"])
        scored_with_graph = best["with_graph"]
        train_loss = ctx.history[best["epoch"] - 1].get("train_loss", float("nan"))
        metrics, preds = validate(runner, panel, y_z, graphs, val_dates, config,
                                  with_graph=best["with_graph"], h_idx=h_idx)
        metrics["train_loss"] = train_loss if train_loss is not None else float("nan")
    elif not metrics:  # resumed after the last epoch: re-score the final model
        metrics, preds = validate(runner, panel, y_z, graphs, val_dates, config,
                                  with_graph=plan[-1] != "baseline", h_idx=h_idx)
        metrics["train_loss"] = float("nan")
    if len(select_dates):
        ctx.set_attr("selected_epoch", best["epoch"])
    ctx.set_attr("epoch_seconds", epoch_seconds)
    if step_seconds:
        # The first step pays one-off costs (allocator warm-up, lazy init); the rest is the rate.
        ctx.set_attr("step_seconds", {"first": round(step_seconds[0], 4),
                                      "median": round(float(np.median(step_seconds[1:] or
                                                                      step_seconds)), 4),
                                      "steps": len(step_seconds)})
    ctx.set_attr("final_batch_size", runner.micro_batch)
    write_predictions(ctx.output_dir / "predictions.parquet", preds)
    _save_model(ctx.output_dir / "model.pt", runner, config, panel=panel,
                with_graph=scored_with_graph)
    return metrics


def pack_dates(panel: Panel, dates: np.ndarray, budget: Any) -> Iterator[np.ndarray]:
    """Consecutive groups of ``dates`` whose stocks add up to at most ``budget()`` rows (a
    date larger than that on its own forms a group, cut into chunks by the runner). The
    budget is read per group, so a halving during one group shrinks the next ones."""
    counts = panel.present[torch.as_tensor(dates)].sum(dim=1).numpy() if len(dates) else []
    group: list[int] = []
    rows = 0
    for d, n in zip(dates, counts, strict=True):
        if group and rows + int(n) > budget():
            yield np.asarray(group, dtype=np.int64)
            group, rows = [], 0
        group.append(int(d))
        rows += int(n)
    if group:
        yield np.asarray(group, dtype=np.int64)


def validate(runner: StepRunner, panel: Panel, y_z: torch.Tensor, graphs: DateGraphs,
             val_dates: np.ndarray, config: TrainConfig, *, with_graph: bool, h_idx: int
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
        cols["pred"].append(point[:, h_idx].numpy())
        cols["target"].append(b.y_raw[:, h_idx].numpy())
        cols["date"].append(panel.dates[b.date[b.group.numpy()]])
        cols["code"].append(np.asarray(panel.codes, dtype=object)[b.stock.numpy()])
    preds = {k: np.concatenate(v) for k, v in cols.items()}
    keep = np.isfinite(preds["target"])
    preds = {k: v[keep] for k, v in preds.items()}
    # An h-day target: Sharpe on non-overlapping h-day periods, annualised with sqrt(252 / h).
    metrics = panel_metrics(preds["date"], preds["pred"], preds["target"],
                            horizon=config.metric_horizon)
    metrics["val_loss"] = float(np.average(losses, weights=weights))
    return metrics, preds


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


def write_predictions(path: Path, preds: dict[str, np.ndarray]) -> None:
    """Validation rows (date, code, pred, target): anyone can recompute the metrics from them."""
    frame = pl.DataFrame({"date": preds["date"].astype("datetime64[D]"),
                          "code": preds["code"].astype(str),
                          "pred": preds["pred"].astype(np.float64),
                          "target": preds["target"].astype(np.float64)})
    import io

    buf = io.BytesIO()
    frame.write_parquet(buf)
    atomic_write_bytes(path, buf.getvalue())


def _save_model(path: Path, runner: StepRunner, config: TrainConfig, *, panel: Panel,
                with_graph: bool) -> None:
    """The scored weights with what prediction on new dates needs (``trainers.atft_gat.predict``):
    the resolved config, the training-date feature statistics, the feature order and whether
    the scored model ran with its graph."""
    import io

    buf = io.BytesIO()
    torch.save({"model": runner.module.state_dict(), "config": to_mapping(config),
                "feature_names": list(panel.feature_names),
                "feature_mean": panel.feature_mean, "feature_std": panel.feature_std,
                "with_graph": bool(with_graph)}, buf)
    atomic_write_bytes(path, buf.getvalue())
