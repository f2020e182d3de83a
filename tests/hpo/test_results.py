"""The incremental best-trial / Pareto-front tracker agrees with Optuna's own front."""

from __future__ import annotations

import random

import optuna
import pytest
from optuna.study import StudyDirection
from optuna.study._multi_objective import _get_pareto_front_trials_by_trials
from optuna.trial import TrialState, create_trial

from hpo.results import ParetoFront

MIN, MAX = StudyDirection.MINIMIZE, StudyDirection.MAXIMIZE


def _trials(rng: random.Random, n: int, k: int) -> list[optuna.trial.FrozenTrial]:
    trials = []
    for number in range(n):
        state = rng.choice([TrialState.COMPLETE] * 4 + [TrialState.FAIL, TrialState.PRUNED])
        values = [float(rng.randint(0, 4)) for _ in range(k)]  # a coarse grid: many ties
        trial = create_trial(state=state, values=values if state == TrialState.COMPLETE
                             else None)
        trial.number = number
        trials.append(trial)
    return trials


@pytest.mark.parametrize("directions", [[MIN], [MAX], [MIN, MAX], [MIN, MAX, MIN],
                                        [MAX, MAX, MAX, MIN]])
def test_incremental_front_equals_optunas_after_every_batch(
        directions: list[StudyDirection]) -> None:
    rng = random.Random(len(directions) * 7 + int(directions[0] == MAX))
    for _ in range(30):
        trials = _trials(rng, rng.randint(0, 40), len(directions))
        front = ParetoFront(directions)
        seen: list[optuna.trial.FrozenTrial] = []
        while len(seen) < len(trials):
            seen = trials[:len(seen) + rng.randint(1, 5)]
            # a snapshot may list earlier trials again, and in any order
            got = front.update(rng.sample(seen, len(seen)))
            complete = [t for t in seen if t.state == TrialState.COMPLETE]
            expected = _get_pareto_front_trials_by_trials(complete, directions)
            assert [t.number for t in got] == sorted(t.number for t in expected)


def test_single_objective_best_is_the_lowest_numbered_tie() -> None:
    front = ParetoFront([MIN])
    trials = []
    for number, value in enumerate([3.0, 1.0, 2.0, 1.0]):
        t = create_trial(state=TrialState.COMPLETE, values=[value])
        t.number = number
        trials.append(t)
    assert [t.number for t in front.update(trials)] == [1, 3]
