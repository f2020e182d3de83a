"""The trial attrs the ATFT-GAT recipe records: what it trained on, and how the run went.

Keys shared with other workloads or read by the service come from :mod:`trainers.attrs`;
the ones below only this recipe writes (status, export and the benchmark scripts show them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainers import attrs
from trainers.atft_gat.config import TrainConfig
from trainers.atft_gat.graph import DateGraphs
from trainers.atft_gat.leakage import GuardScores
from trainers.atft_gat.prepare import Inputs
from trainers.context import TrialContext

DATES_PER_STEP = "dates_per_step"
TIMING = "timing"  # setup seconds: graph and the rest of the data
STOPPED_EARLY = "stopped_early"
SELECTED_EPOCH = "selected_epoch"
EPOCH_SECONDS = "epoch_seconds"
STEP_SECONDS = "step_seconds"
FINAL_BATCH_SIZE = "final_batch_size"  # the micro-batch after any out-of-memory halving
PERIODS_PER_YEAR = "periods_per_year"  # the annualisation every Sharpe ratio used

# the timing and size tests' [own date, one date older] RankICs, persistence and implied Sharpe
LEAK_GUARD = "leak_guard"
# With [data] leak_guard = "warn": the refusal the guard would have made, kept as a warning.
LEAK_WARNING = "leak_warning"
# Features whose leakage-guard RankIC is kept as a trial attr (the largest in magnitude).
LISTED_SCORES = 10


def record_feature_scores(ctx: TrialContext, scores: GuardScores) -> None:
    """The leakage guard's scores of the ``LISTED_SCORES`` features closest to a target: each
    one's RankIC of largest magnitude over the targets, and the timing and size tests'
    figures."""
    ranked = sorted(scores.strongest().items(), key=lambda kv: -abs(kv[1]))[:LISTED_SCORES]
    ctx.set_attr(attrs.FEATURE_RANK_IC, dict(ranked))
    index = {f: j for j, f in enumerate(scores.features)}
    ctx.set_attr(LEAK_GUARD, {
        "timing_target": scores.timing_target,
        "columns": ["rank_ic", "rank_ic_a_date_older", "persistence", "sharpe"],
        "timing": {f: [round(float(scores.now[index[f]]), 4),
                       round(float(scores.older[index[f]]), 4),
                       round(float(scores.persistence[index[f]]), 3),
                       round(float(scores.sharpe[index[f]]), 2)] for f, _ in ranked}})


def record_split(ctx: TrialContext, inp: Inputs) -> None:
    """The trial's periods (first and last date; the purge gap) and the study's date split."""
    dates = inp.panel.dates
    last_fit = inp.select_dates[-1] if len(inp.select_dates) else inp.train_dates[-1]
    split = {**inp.split.ranges(inp.source_dates),
             "fit": [str(dates[inp.train_dates[0]]), str(dates[inp.train_dates[-1]])],
             "purge_dates": int(inp.val_dates[0] - last_fit - 1)}
    if len(inp.select_dates):
        split["select"] = [str(dates[inp.select_dates[0]]), str(dates[inp.select_dates[-1]])]
    ctx.set_attr(attrs.SPLIT, split)
    ctx.set_attr(attrs.DATE_SPLIT, inp.split.ranges(inp.source_dates))  # the study's


def record_data(ctx: TrialContext, inp: Inputs, config: TrainConfig, *,
                coverage: dict[str, Any]) -> None:
    """Size and coverage of the data, and the graph's summary when the model has the graph."""
    graphs = inp.graphs
    ctx.set_attr(attrs.BOOK, config.book.to_json())
    ctx.set_attr(attrs.DATA, {
        "rows": int(inp.fc.n_rows), "dates": len(inp.source_dates), **coverage,
        "stocks": int(inp.panel.x.shape[1]), "features": list(inp.panel.feature_names),
        "train_dates": len(inp.train_dates), "val_dates": len(inp.val_dates),
        "test_dates": len(inp.split.test), "cache_key": inp.fc.key,
        "edges_per_date": round(graphs.n_edges / max(1, graphs.n_dates), 1)})
    if config.use_graph:
        ctx.set_attr(attrs.GRAPH, graph_summary(graphs, config))


def graph_summary(graphs: DateGraphs, config: TrainConfig) -> dict[str, Any]:
    """The trial attr ``graph``: k used and built, and edges per date (all dates counted)."""
    per_date = graphs.edges_per_date()
    return {"k": config.graph_k, "k_max": config.effective_graph_k_max,
            "edges_per_date_mean": round(float(per_date.mean()), 1) if len(per_date) else 0.0,
            "edges_per_date_min": int(per_date.min()) if len(per_date) else 0,
            "edges_per_date_max": int(per_date.max()) if len(per_date) else 0,
            "dates_without_edges": int((per_date == 0).sum())}


def record_timing(ctx: TrialContext, *, setup_seconds: float, graph_seconds: float) -> None:
    ctx.set_attr(TIMING, {"setup_s": round(setup_seconds, 3), "graph_s": round(graph_seconds, 3),
                          "data_s": round(setup_seconds - graph_seconds, 3)})


def record_run(ctx: TrialContext, *, selected_epoch: int | None, epoch_seconds: list[float],
               step_seconds: list[float], final_batch_size: int) -> None:
    """How the loop went: the epoch selection chose (when it ran), epoch and step times."""
    if selected_epoch is not None:
        ctx.set_attr(SELECTED_EPOCH, selected_epoch)
    ctx.set_attr(EPOCH_SECONDS, epoch_seconds)
    if step_seconds:
        # The first step pays one-off costs (allocator warm-up, lazy init); the rest is the rate.
        ctx.set_attr(STEP_SECONDS, {"first": round(step_seconds[0], 4),
                                    "median": round(float(np.median(step_seconds[1:]
                                                                    or step_seconds)), 4),
                                    "steps": len(step_seconds)})
    ctx.set_attr(FINAL_BATCH_SIZE, final_batch_size)
