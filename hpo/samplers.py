"""The samplers a study file's ``[sampler] name`` can pick: one builder each, in one registry
(as ``hpo.pruners`` has for pruners). Adding a sampler is one entry of ``BUILDERS``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna


def _tpe(sampler: Any, space: Sequence[Any], seed: int | None) -> optuna.samplers.BaseSampler:
    # multivariate: the search space's parameters interact; constant_liar: parallel workers
    # do not all draw the same point while the first trials run.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=sampler.n_startup_trials,
                                      multivariate=True, constant_liar=True)


def _nsga2(sampler: Any, space: Sequence[Any], seed: int | None) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed)


def _gp(sampler: Any, space: Sequence[Any], seed: int | None) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=sampler.n_startup_trials)


def _random(sampler: Any, space: Sequence[Any], seed: int | None) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def _grid(sampler: Any, space: Sequence[Any], seed: int | None) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GridSampler({p.name: p.grid_values() for p in space}, seed=seed)


BUILDERS: dict[str, Callable[[Any, Sequence[Any], int | None], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe, "nsga2": _nsga2, "gp": _gp, "random": _random, "grid": _grid}
SAMPLERS = tuple(BUILDERS)


def build_sampler(sampler: Any, space: Sequence[Any], seed: int | None
                  ) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of a ``[sampler]`` table (``hpo.config.SamplerSpec``) over the
    study's search space (``hpo.space.Param``), seeded with ``seed``."""
    return BUILDERS[sampler.name](sampler, space, seed)
