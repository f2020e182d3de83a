"""ATFT-GAT-FAN: cross-sectional stock ranking with temporal fusion, graph attention and FAN.

The flagship workload. ``WORKLOAD.train(config, ctx)`` runs the recipe in ``train.py``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from trainers.atft_gat.config import TrainConfig
from trainers.atft_gat.folds import CV
from trainers.atft_gat.heldout import HELDOUT
from trainers.context import TrialContext
from trainers.errors import UserError
from trainers.metrics.registry import directions
from trainers.registry import Workload

if TYPE_CHECKING:
    import polars as pl


def _train(config: TrainConfig, ctx: TrialContext) -> dict[str, Any]:
    # Imported on first use: validating a study file must not load the cache and data stack.
    from cache import CacheError

    if config.cv is CV.WALK_FORWARD:
        from trainers.atft_gat.walk_forward import train
    else:
        from trainers.atft_gat.train import train
    try:
        return train(config, ctx)
    except CacheError as exc:  # the cache's one-line mistakes are the user's, as UserError
        raise UserError(str(exc)) from exc


def _preflight(config: TrainConfig) -> None:
    from trainers.atft_gat.preflight import preflight

    preflight(config)


def generate_panel(**options: Any) -> pl.DataFrame:
    """The synthetic market for the cache's ``synthetic:...`` sources (``cache.GENERATORS``).

    ``generate_market`` with its UserError raised as the cache's CacheError, so that
    ``python -m cache.build synthetic:...`` reports a bad option as one line.
    """
    from cache import CacheError

    # Looked up when called (not imported by name), so tests can stand in a fake module.
    synthetic = importlib.import_module("trainers.atft_gat.synthetic")
    try:
        return synthetic.generate_market(**options)
    except UserError as exc:
        raise CacheError(str(exc)) from exc


def _init_study(panel: Any, name: str) -> str:
    from trainers.atft_gat.init import init_study

    return init_study(panel, name)


def _default_objectives(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
    """On a file panel the study selects on the Sharpe ratio net of costs (a signal has to
    earn its trading); the synthetic market, a demonstration, on the gross one."""
    synthetic = settings.get("source", "synthetic") == "synthetic"
    return [("sharpe" if synthetic else "sharpe_net", "maximize"), ("rank_ic", "maximize"),
            ("val_loss", "minimize")]


WORKLOAD = Workload(
    name="atft_gat",
    config_cls=TrainConfig,
    train=_train,
    # The cross-sectional figures of the metric registry (sharpe, sharpe_net, turnover, ...)
    # and the recipe's losses.
    metrics={**directions(), "val_loss": "minimize", "train_loss": "minimize"},
    description="ATFT-GAT-FAN cross-sectional stock ranking (synthetic market or your panel).",
    heldout=HELDOUT,
    preflight=_preflight,
    default_objectives=_default_objectives,
    init_study=_init_study,
    steps=lambda config: config.reported_steps,
    portfolio_fields=TrainConfig.PORTFOLIO_FIELDS,
)
