"""Fold pruning: Optuna's WilcoxonPruner, folds as instances, in a real study."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from hpo.records import trial_attrs
from hpo.run import main

STUDY = """
name = "folds"
workload = "tests.hpo.toy_folds"
n_trials = {n}
[[objectives]]
metric = "score"
direction = "maximize"
[sampler]
name = "random"
seed = 0
[pruner]
name = "wilcoxon"
[trainer]
cv_folds = 4
[search_space.quality]
type = "float"
low = 0.0
high = 1.0
{enqueue}
"""


def _enqueue(*qualities: float) -> str:
    return "\n".join(f'[[enqueue]]\nname = "q{q}"\nparams = {{ quality = {q} }}'
                     for q in qualities)


def _trials(tmp_path: Path, name: str = "folds") -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'out/hpo.db'}")
    return study.get_trials(deepcopy=False)


def test_a_trial_worse_on_every_fold_stops_after_three_and_keeps_its_folds(
        tmp_path: Path) -> None:
    (tmp_path / "folds.toml").write_text(STUDY.format(
        n=4, enqueue=_enqueue(0.5, 0.2, 0.49, 0.8)))
    assert main(["--study", str(tmp_path / "folds.toml"), "--output",
                 str(tmp_path / "out")]) == 0
    trials = _trials(tmp_path)
    states = [t.state for t in trials]
    # 0.5 is the first best; 0.2 and even 0.49 are worse on each of 3 folds: the test pairs
    # them fold by fold, and 3 of 3 worse has p = 0.125 < 0.2; 0.8 is better and finishes.
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED,
                      TrialState.COMPLETE]
    for pruned in (trials[1], trials[2]):
        assert pruned.user_attrs["pruned_at_epoch"] == 3
        assert pruned.user_attrs["epochs_planned"] == 4
        assert [f["fold"] for f in trial_attrs(pruned)["fold_metrics"]] == [1, 2, 3]
        assert "wilcoxon" in pruned.user_attrs["prune_reason"]
        # the folds' own figures went to the pruner, at instance ids 0..2
        own = [f["score"] for f in trial_attrs(pruned)["fold_metrics"]]
        assert [pruned.intermediate_values[s] for s in range(3)] == own


def test_a_trial_is_judged_only_after_n_startup_steps_folds(tmp_path: Path) -> None:
    (tmp_path / "folds.toml").write_text(STUDY.format(
        n=2, enqueue=_enqueue(0.5, 0.0)).replace('name = "wilcoxon"',
                                                  'name = "wilcoxon"\nn_startup_steps = 4'))
    assert main(["--study", str(tmp_path / "folds.toml"), "--output",
                 str(tmp_path / "out")]) == 0
    bad = _trials(tmp_path)[1]
    assert bad.state == TrialState.PRUNED and bad.user_attrs["pruned_at_epoch"] == 4


def test_in_a_holdout_study_it_stands_aside_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "plain.toml").write_text("""
name = "plain"
workload = "tests.hpo.toy_workload"
n_trials = 2
[[objectives]]
metric = "loss"
direction = "minimize"
[pruner]
name = "wilcoxon"
[trainer]
epochs = 3
""")
    assert main(["--study", str(tmp_path / "plain.toml"), "--output", str(tmp_path / "out")]) == 0
    trials = _trials(tmp_path, "plain")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert trials[0].user_attrs["wilcoxon"].startswith("not applied: the trainer reports no "
                                                       "per-fold figures")
