"""The workload contract ``hpo`` drives (``trainers.registry.Workload``): what it reads is
stated by the workload, never probed on its config objects."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO
from trainers.registry import get_workload, workload_names


def test_each_workload_states_how_often_a_trial_reports() -> None:
    from tests.hpo.toy_folds import FoldConfig
    from trainers.atft_gat.config import TrainConfig

    atft = get_workload("atft_gat")
    assert atft.reported_steps(TrainConfig(epochs=3)) == 3
    assert atft.reported_steps(TrainConfig(epochs=3, cv="walk_forward", cv_folds=5)) == 5
    toy = get_workload("tests.hpo.toy_folds")  # steps = folds, stated by the toy itself
    assert toy.reported_steps(FoldConfig(cv_folds=6)) == 6
    for name in workload_names():  # every built-in one knows its steps
        workload = get_workload(name)
        assert isinstance(workload.reported_steps(workload.config_cls()), int), name
    assert atft.portfolio_fields == ("enter", "exit", "score_halflife", "cost_bps")
    assert get_workload("lm").portfolio_fields == ()


def _config_probes(path: Path) -> list[str]:
    """``getattr(<something config>, ...)`` calls in a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr") and node.args
                and "config" in ast.unparse(node.args[0])):
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_hpo_never_probes_a_workload_config() -> None:
    probes = [p for path in sorted((REPO / "hpo").rglob("*.py")) for p in _config_probes(path)]
    assert probes == []


def test_a_toy_walk_forward_workload_runs_without_touching_hpo(tmp_path: Path) -> None:
    """The toy (tests/hpo/toy_folds.py) is a module outside hpo/ and trainers/: a study names
    it by its dotted path, and each trial records the steps the workload stated."""
    from hpo import api
    from hpo.attrs import EPOCHS_PLANNED
    from hpo.records import trial_attrs

    spec = tmp_path / "toy.toml"
    spec.write_text('name = "toy"\nworkload = "tests.hpo.toy_folds"\nn_trials = 2\n'
                    '[[objectives]]\nmetric = "score"\ndirection = "maximize"\n'
                    '[trainer]\ncv_folds = 5\n'
                    '[search_space.quality]\ntype = "float"\nlow = 0.0\nhigh = 1.0\n')
    assert api.run_study(spec, output=tmp_path / "out", quiet=True) == 0
    trials = api.load_study("toy", output=tmp_path / "out").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all(trial_attrs(t).get(EPOCHS_PLANNED) == 5 for t in trials)
    assert all(len(t.intermediate_values) == 5 for t in trials)
