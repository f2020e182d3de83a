"""The trial's inputs: the study's panel, cut and lagged, its graphs, the leakage guard, and
each model's standardised features and targets (``prepare_inputs`` for one holdout model,
``load_study_panel`` + ``fold_inputs`` for the folds of walk-forward validation)."""

from __future__ import annotations

import time

import numpy as np
import torch

from cache import FeatureCache
from trainers.atft_gat.config import TrainConfig
from trainers.atft_gat.data import Panel, cache_panel, standardise, study_split
from trainers.atft_gat.graph import DateGraphs, GraphConfig, build_graphs
from trainers.atft_gat.leakage import check_features
from trainers.atft_gat.prepare import (
    Inputs,
    StudyPanel,
    carve_selection,
    leak_scores,
    load_features,
    no_graphs,
    zscore_targets,
)
from trainers.atft_gat.record import LEAK_WARNING, record_feature_scores
from trainers.context import TrialContext
from trainers.errors import UserError
from trainers.progress import phase_of
from trainers.runtime import release_host_memory, select_device


# -----------------------------------------------------------------------------------
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
    study = load_study_panel(config, ctx)
    split = study.split
    return fold_inputs(study, config, train=split.train, val=split.val)


def load_study_panel(config: TrainConfig, ctx: TrialContext) -> StudyPanel:
    """What every fold of a trial shares: the cached panel cut after the last validation label
    (the test period and the purge before it are not in it at all), lagged, unstandardised;
    the study's split; the graphs; the leakage guard's verdict on the training dates (of the
    first fold under walk-forward validation: dates no fold validates on)."""
    fc = load_features(config, ctx.cache_dir)
    panel = cache_panel(fc, missing_indicator=config.missing_indicator)
    t_graph = time.perf_counter()
    n_dates = panel.x.shape[0]
    # One split for the whole study: it depends on the panel and the data settings only.
    dsplit = study_split(config, panel.dates)
    source_dates = panel.dates
    panel = panel.head(dsplit.read_until + 1).lagged(config.execution_lag).head(
        int(dsplit.val[-1]) + 1)
    guarded = dsplit.folds[0].train if dsplit.folds else dsplit.train
    train_dates = guarded[guarded >= config.lookback - 1]
    if len(train_dates) == 0:
        raise UserError(f"the panel's {n_dates} dates leave no training date with a full "
                        f"lookback of {config.lookback} dates; use more dates or a shorter "
                        "lookback")
    # A model without the graph block never reads a graph: none is built.
    graphs = (load_graphs(fc, panel, config, ctx) if config.use_graph
              else no_graphs(len(panel.dates)))
    release_host_memory()  # a graph build's freed per-block arrays (see release_host_memory)
    graph_seconds = time.perf_counter() - t_graph
    scores = leak_scores(fc, panel, train_dates, config)
    record_feature_scores(ctx, scores)
    try:
        check_features(scores, threshold=config.leak_threshold,
                       allow=config.allow_features, sharpe_ceiling=config.leak_sharpe)
    except UserError as exc:
        if config.leak_guard != "warn":
            raise
        # The user knows better: the refusal becomes a warning, recorded with the trial.
        ctx.set_attr(LEAK_WARNING, str(exc))
        ctx.log(f"warning (leak_guard = \"warn\"): {exc}")
    release_host_memory()  # and the guard's ranks
    return StudyPanel(fc=fc, split=dsplit, source_dates=source_dates, panel=panel,
                      graphs=graphs, graph_seconds=graph_seconds,
                      h_idx=list(config.horizons).index(config.metric_horizon))


def fold_inputs(study: StudyPanel, config: TrainConfig, *, train: np.ndarray,
                val: np.ndarray) -> Inputs:
    """The inputs of one model: trained on ``train``, scored on ``val`` (date indices). The
    panel is cut after ``val`` and standardised with the statistics of ``train`` only."""
    fc, h_idx = study.fc, study.h_idx
    panel = study.panel.head(int(val[-1]) + 1)
    train_dates = train[train >= config.lookback - 1]
    if len(train_dates) == 0:
        raise UserError(f"no training date of the fold ending {study.source_dates[train[-1]]} "
                        f"has a full lookback of {config.lookback} dates; use more dates, a "
                        "shorter lookback or fewer cv_folds")
    panel = standardise(panel, train_dates, moments=fc.feature_moments(train_dates))
    y_z = zscore_targets(panel.y)
    # Train only on dates whose scored horizon has labels.
    train_dates = train_dates[torch.isfinite(y_z[train_dates, :, h_idx]).any(dim=1).numpy()]
    train_dates, select_dates = carve_selection(train_dates, config)
    return Inputs(fc=fc, split=study.split, source_dates=study.source_dates, panel=panel,
                  y_z=y_z, graphs=study.graphs, train_dates=train_dates,
                  select_dates=select_dates, val_dates=val, h_idx=h_idx,
                  graph_seconds=study.graph_seconds)


