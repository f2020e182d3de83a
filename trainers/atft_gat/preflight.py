"""Every check of a user's panel that needs no training, made before anything is written.

``hpo.run`` calls :func:`preflight` (as ``Workload.preflight``) with the study's settings
before it creates the study, a trial or a directory, so a panel that cannot train fails with
one line and exit code 2 and leaves nothing behind. The checks, in order:

1. the targets ``ret_<h>d`` of every ``horizons`` entry are columns (when they are not, the
   message lists the targets the panel has and the ``horizons`` setting that would use them);
2. the ``features`` listed, and the graph's ``graph_source`` when the model has the graph, are
   columns;
3. everything the cache build checks (``cache.check_source``): numeric types, parseable dates
   and codes, one row per (date, code);
4. the study's split on the panel's dates, by the rule training uses (``data.study_split``):
   ``val_start`` / ``test_start`` inside the dates, enough dates for training, validation and
   test, and under walk-forward validation for every fold.

The synthetic market needs none of this: its generator's settings are checked with the config.
"""

from __future__ import annotations

import re

from trainers.atft_gat.config import TrainConfig
from trainers.errors import UserError

TARGET = re.compile(r"ret_(\d+)d")


def _targets_present(columns: list[str]) -> list[int]:
    return sorted(int(m.group(1)) for c in columns if (m := TARGET.fullmatch(c)))


def preflight(config: TrainConfig) -> None:
    """Raise ``UserError`` with a one-line fix for any problem of the panel (module doc)."""
    if config.source == "synthetic":
        return
    from cache import CacheError, check_source, source_columns
    from trainers.atft_gat.data import study_split
    from trainers.atft_gat.prepare import cache_spec

    where = f"panel {config.source}"
    spec = cache_spec(config)
    try:
        columns = source_columns(config.source, spec)
    except CacheError as exc:
        raise UserError(str(exc)) from None
    wanted = [f"ret_{h}d" for h in config.horizons]
    missing = [c for c in wanted if c not in columns]
    if missing:
        have = _targets_present(columns)
        if have:
            usable = [h for h in have if h <= config.purge - config.execution_lag] or have
            fix = (f"it has {', '.join(f'ret_{h}d' for h in have)}: set [data] horizons = "
                   f"{usable} (and metric_horizon to one of them), or add the missing columns")
        else:
            fix = ("it has no ret_<h>d column: add the forward return of each horizon as "
                   "ret_1d, ret_5d, ... (docs/workloads.md: Your own panel)")
        raise UserError(f"{where} has no target column(s) {', '.join(missing)} for horizons = "
                        f"{list(config.horizons)}; {fix}")
    absent = [c for c in config.features if c not in columns]
    if absent:
        raise UserError(f"{where} has no column(s) {', '.join(absent)} named in features; "
                        f"its columns: {', '.join(columns)}")
    if config.use_graph and config.graph_source not in (config.features or columns):
        listed = " among the features" if config.features else ""
        raise UserError(f"{where} has no column {config.graph_source!r}{listed} for "
                        "graph_source (the correlation graph is built from a column of realised "
                        "past returns); set [data] graph_source to one, or use_graph = false")
    try:
        found = check_source(config.source, spec)
    except CacheError as exc:
        raise UserError(str(exc)) from None
    # The study's split on the panel's calendar (read by the check above), by the rule
    # training uses (data.study_split): val_start / test_start inside the dates, and enough
    # dates for the periods and, under walk-forward validation, for every fold.
    try:
        study_split(config, found["calendar"])
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
