"""MO-ASHA in real studies: pruned trials, the target, the samplers, status and export."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from hpo.config import load_study_spec
from hpo.pruning import epoch_values
from hpo.run import main
from hpo.study import open_study
from hpo.worker import run_worker
from tests.hpo.test_crash import args_for, trials_of

STUDY = """
name = "{name}"
workload = "tests.hpo.toy_workload"
n_trials = {n_trials}
[[objectives]]
metric = "loss"
direction = "minimize"
[[objectives]]
metric = "x"
direction = "minimize"
[sampler]
name = "{sampler}"
seed = 3
n_startup_trials = 3
[pruner]
name = "mo_asha"
min_epochs = 1
eta = 3
min_trials_at_rung = 2
[trainer]
epochs = {epochs}
sleep_s = {sleep_s}
[storage]
heartbeat_interval = 1
grace_period = 5
[search_space.lr]
type = "float"
low = 0.01
high = 0.45
log = true
[search_space.width]
type = "int"
low = 1
high = 4
"""


def write(tmp_path: Path, *, name: str, n_trials: int, sampler: str = "random",
          epochs: int = 9, sleep_s: float = 0.0) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(STUDY.format(name=name, n_trials=n_trials, sampler=sampler, epochs=epochs,
                                 sleep_s=sleep_s))
    return path


def check_pruned(trials: list[FrozenTrial], *, target: int, epochs: int) -> list[FrozenTrial]:
    """The study reached its target with COMPLETE + PRUNED; every pruned trial is whole."""
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == target
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    for t in pruned:
        at = t.user_attrs["pruned_at_epoch"]
        assert at in (1, 3)  # the rungs below 9 epochs with min_epochs 1, eta 3
        assert t.user_attrs["prune_reason"].startswith(f"pruned by mo_asha at epoch {at}: ")
        assert t.values is None  # Optuna keeps no values for a pruned multi-objective trial
        vectors = epoch_values(t.system_attrs)
        assert sorted(vectors) == list(range(1, at + 1))
        # the last objective values are kept as attrs, equal to the stored vector
        assert [t.user_attrs["loss"], t.user_attrs["x"]] == pytest.approx(vectors[at])
        assert t.user_attrs["epochs_planned"] == epochs
        assert t.intermediate_values == {}  # none in a multi-objective study (TPE would crash)
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert sorted(epoch_values(t.system_attrs)) == list(range(1, epochs + 1))
            assert epoch_values(t.system_attrs)[epochs] == pytest.approx(t.values)
    return pruned


def test_two_workers_prune_and_reach_the_target(tmp_path: Path, storage_url: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, name="moasha", n_trials=10, sleep_s=0.02)
    out = tmp_path / "out"
    assert main([*args_for(path, storage_url, out), "--workers", "2"]) == 0
    trials = trials_of(storage_url, "moasha")
    pruned = check_pruned(trials, target=10, epochs=9)
    assert pruned, "no trial was pruned"
    workers = {t.user_attrs["worker"] for t in trials if "worker" in t.user_attrs}
    assert len(workers) == 2
    saved = sum(9 - t.user_attrs["pruned_at_epoch"] for t in pruned)

    from hpo.status import main as status_main

    capsys.readouterr()
    assert status_main(["--study", "moasha", "--storage", storage_url, "--output", str(out),
                        "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["counts"]["pruned"] == len(pruned)
    assert status["epochs_saved"] == saved
    assert status_main(["--study", "moasha", "--storage", storage_url, "--output",
                        str(out)]) == 0
    assert f"{len(pruned)} pruned (saved {saved} epochs)" in capsys.readouterr().out

    from hpo.export import main as export_main

    assert export_main(["--study", "moasha", "--storage", storage_url, "--output",
                        str(out)]) == 0
    assert f"{len(pruned)} pruned, {saved} epochs saved" in capsys.readouterr().out
    csv = (out / "moasha" / "trials.csv").read_text()
    assert "user_attrs_pruned_at_epoch" in csv.splitlines()[0]


def _sampler(name: str) -> optuna.samplers.BaseSampler:
    # small startup / population, so the model-based part runs with pruned trials stored
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=0, n_startup_trials=3, multivariate=True,
                                          constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=0, population_size=4)
    return optuna.samplers.GPSampler(seed=0, n_startup_trials=3)


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp"])
def test_samplers_work_with_pruned_trials(tmp_path: Path, sampler: str) -> None:
    """Optuna issue 5260's failure mode: samplers on a multi-objective study whose history
    holds PRUNED trials must neither crash nor take a pruned trial for a complete one."""
    target = 14
    spec = load_study_spec(str(write(tmp_path, name=f"s_{sampler}", n_trials=target,
                                     sampler=sampler,
                                     epochs=4)))
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = open_study(spec, url, force=False, target=target, quiet=True)
    study.sampler = _sampler(sampler)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        assert run_worker(study, spec, output=tmp_path / "out", target=target, timeout=None,
                          announce=False) == 0
    trials = study.get_trials(deepcopy=False)
    pruned = check_pruned(trials, target=target, epochs=4)
    assert pruned, "no trial was pruned"
    first_pruned = min(t.number for t in pruned)
    # the sampler drew model-based trials after a pruned one was stored
    assert max(t.number for t in trials) - first_pruned >= 4
    front = study.best_trials
    assert front and all(t.state == TrialState.COMPLETE for t in front)


def test_tpe_would_crash_on_pruned_trials_with_intermediate_values(tmp_path: Path) -> None:
    """Why per-epoch vectors are system attrs and not intermediate values in a multi-objective
    study: TPE (Optuna 5.0) asks such a study for its single direction once a pruned trial
    has intermediate values. If this starts passing, Optuna fixed it (see DESIGN.md)."""
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    for i in range(3):  # the first two are TPE's random startup trials
        t = study.ask()
        x = t.suggest_float("x", 0, 1)
        if i == 2:
            study._storage.set_trial_intermediate_value(t._trial_id, 1, x)
            study.tell(t, state=TrialState.PRUNED)
        else:
            study.tell(t, [x, 1 - x])
    with pytest.raises(RuntimeError, match="single direction"):
        study.ask().suggest_float("x", 0, 1)


def test_pruned_trials_count_toward_the_target_across_restarts(tmp_path: Path) -> None:
    path = write(tmp_path, name="again", n_trials=6)
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    assert main(args_for(path, url, tmp_path / "out")) == 0
    first = trials_of(url, "again")
    assert main(args_for(path, url, tmp_path / "out")) == 0  # nothing left to do
    assert len(trials_of(url, "again")) == len(first)
    check_pruned(first, target=6, epochs=9)
