"""hpo.study's seeds: a trial's trainer seed is a hash, the same for a retry of the trial."""

from __future__ import annotations

from pathlib import Path

import optuna

from hpo.config import parse_study
from hpo.objective import Objective
from hpo.study import open_study, trial_seed


def test_trial_seeds_of_different_studies_do_not_collide() -> None:
    # The old sum, seed + trial number, gave seed 0's trial 4 the seed of seed 4's trial 0.
    assert 0 + 4 == 4 + 0
    assert trial_seed(0, "s", 4) != trial_seed(4, "s", 0)
    assert trial_seed(0, "s", 4) != trial_seed(0, "t", 4)  # another study, another seed
    seeds = {trial_seed(seed, "s", n) for seed in range(10) for n in range(10)}
    assert len(seeds) == 100 and all(0 <= s < 2**32 for s in seeds)
    assert trial_seed(3, "s", 7) == trial_seed(3, "s", 7)  # deterministic, every host


def test_the_objective_seeds_a_trial_by_hash_and_a_retry_keeps_it(tmp_path: Path) -> None:
    raw = {"name": "seeds", "workload": "tests.hpo.toy_workload", "n_trials": 3,
           "objectives": [{"metric": "loss", "direction": "minimize"}],
           "sampler": {"name": "random", "seed": 4}, "trainer": {"epochs": 1},
           "search_space": {"lr": {"type": "float", "low": 0.01, "high": 0.5}}}
    spec = parse_study(raw, path=tmp_path / "seeds.toml")
    study = open_study(spec, f"sqlite:///{tmp_path / 'hpo.db'}", force=False, target=3,
                       quiet=True)
    study.optimize(Objective(spec, output_dir=tmp_path / "a"), n_trials=2)
    # a retry of trial 0 (what a dead worker's trial gets), run where no checkpoint is left
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)(study, study.trials[0])
    study.optimize(Objective(spec, output_dir=tmp_path / "b"), n_trials=1)
    seeds = [t.user_attrs["seed"] for t in study.get_trials()]
    assert seeds == [trial_seed(4, "seeds", 0), trial_seed(4, "seeds", 1),
                     trial_seed(4, "seeds", 0)]
    assert seeds[0] != seeds[1]
