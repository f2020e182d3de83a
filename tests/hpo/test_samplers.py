"""The sampler registry: every name a study file may use builds its Optuna sampler, seeded,
over the study's search space."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpo.config import SAMPLERS, parse_study
from hpo.study import make_sampler

EXPECTED = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
            "gp": optuna.samplers.GPSampler, "random": optuna.samplers.RandomSampler,
            "grid": optuna.samplers.GridSampler}
STUDY = {
    "workload": "denoise", "n_trials": 2,
    "objectives": [{"metric": "test_loss", "direction": "minimize"}],
    "search_space": {"lr": {"type": "float", "low": 0.01, "high": 0.03, "step": 0.01}},
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_registered_sampler_builds(name: str) -> None:
    assert set(SAMPLERS) == set(EXPECTED)
    spec = parse_study({**STUDY, "sampler": {"name": name, "seed": 3}}, path=Path("s.toml"))
    sampler = make_sampler(spec)
    assert type(sampler) is EXPECTED[name]
    if name == "grid":  # the grid is the search space's
        study = optuna.create_study(sampler=sampler)
        study.optimize(lambda t: t.suggest_float("lr", 0.01, 0.03, step=0.01), n_trials=3)
        assert sorted(round(t.params["lr"], 2) for t in study.trials) == [0.01, 0.02, 0.03]
