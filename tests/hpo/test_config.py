"""Study-file validation: every problem is reported at once, each naming file, key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.config import Param, available_studies, load_study_spec, resolve_study_path
from tests.hpo.toy_workload import SPACE_TOML
from trainers.errors import UserError

TOY = """
description = "toy"
workload = "tests.hpo.toy_workload"
n_trials = 4
[[objectives]]
metric = "loss"
direction = "minimize"
[sampler]
name = "tpe"
seed = 1
[trainer]
epochs = 2
""" + SPACE_TOML


def write(tmp_path: Path, text: str, name: str = "toy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_file_parses_into_frozen_spec(tmp_path: Path) -> None:
    spec = load_study_spec(str(write(tmp_path, TOY)))
    assert spec.name == "toy" and spec.n_trials == 4
    assert [p.name for p in spec.search_space] == ["lr", "width", "optimizer"]
    lr = spec.search_space[0]
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 0.01, 0.5, True)
    assert spec.directions == ["minimize"]
    with pytest.raises(AttributeError):
        spec.n_trials = 5  # type: ignore[misc]


def test_all_problems_reported_together(tmp_path: Path) -> None:
    bad = TOY.replace('low = 0.01\nhigh = 0.5', 'low = 0.5\nhigh = 0.01') \
             .replace('choices = ["sgd", "momentum"]', 'choices = []') \
             .replace('metric = "loss"', 'metric = "sharpe"') \
             .replace("[trainer]\nepochs = 2", "[trainer]\nepochs = 2\nepoch = 3") \
             .replace('name = "tpe"', 'name = "bayes"')
    with pytest.raises(UserError) as err:
        load_study_spec(str(write(tmp_path, bad)))
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "toy.toml") in msg
    assert "5 problems" in msg
    assert "[search_space.lr] low 0.5 > high 0.01" in msg
    assert "[search_space.optimizer.choices] must be a non-empty list, got []" in msg
    assert "unknown metric 'sharpe'" in msg and "allowed: loss, score, x" in msg
    assert "unknown key 'epoch' (did you mean 'epochs'?)" in msg
    assert "[sampler.name] got 'bayes'; allowed: tpe, nsga2, gp, random, grid" in msg


@pytest.mark.parametrize("snippet, expected", [
    ("workload = \"nope\"", "unknown workload 'nope'"),
    ("[objectives]", "malformed TOML"),
    ("colour = 3", "[colour] unknown key 'colour'"),
])
def test_single_problems(tmp_path: Path, snippet: str, expected: str) -> None:
    text = TOY.replace('workload = "tests.hpo.toy_workload"', snippet) if "workload" in snippet \
        else snippet + "\n" + TOY
    with pytest.raises(UserError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        load_study_spec(str(write(tmp_path, text)))


def test_search_space_name_must_be_a_trainer_setting(tmp_path: Path) -> None:
    text = TOY + '\n[search_space.hiden]\ntype = "int"\nlow = 1\nhigh = 2\n'
    with pytest.raises(UserError, match=r"unknown key 'hiden'"):
        load_study_spec(str(write(tmp_path, text)))


def test_trainer_range_errors_come_from_the_workload_config(tmp_path: Path) -> None:
    text = TOY.replace("epochs = 2", "epochs = 0")
    with pytest.raises(UserError, match="epochs must be >= 1, got 0"):
        load_study_spec(str(write(tmp_path, text)))


def test_unknown_study_lists_available(tmp_path: Path) -> None:
    write(tmp_path, TOY, "alpha.toml")
    with pytest.raises(UserError, match="unknown study 'beta'; available: alpha"):
        resolve_study_path("beta", tmp_path)


def test_shipped_study_files_all_load() -> None:
    names = available_studies()
    assert {"production", "demo"} <= set(names)
    for name in names:
        spec = load_study_spec(name)
        assert spec.objectives and spec.n_trials >= 1


def test_fingerprint_changes_with_search_space(tmp_path: Path) -> None:
    a = load_study_spec(str(write(tmp_path, TOY)))
    b = load_study_spec(str(write(tmp_path, TOY.replace("high = 4", "high = 5"), "b.toml")))
    assert a.fingerprint() != b.fingerprint()


@pytest.mark.parametrize("param, expected", [
    (Param("n", "int", low=1, high=4, step=1), 2),  # (1 + 4) // 2
    (Param("n", "int", low=-3, high=0, step=1), -2),
    (Param("n", "int", low=2, high=20, step=3), 11),  # grid 2, 5, ..., 20: its middle point
    (Param("n", "int", low=2, high=21, step=3), 11),  # 21 is past the last grid point, 20
    (Param("n", "int", low=16, high=1024, log=True, step=1), 128),  # geometric
    (Param("n", "int", low=7, high=7, step=1), 7),
    (Param("x", "float", low=0.0, high=1.0), 0.5),
    (Param("x", "float", low=1e-4, high=1e-2, log=True), 1e-3),
    (Param("x", "float", low=0.0, high=0.3, step=0.1), 0.1),  # grid 0, .1, .2, .3 (not 2.99)
    (Param("x", "float", low=0.0, high=1.0, step=0.3), 0.3),  # grid 0, .3, .6, .9
    (Param("c", "categorical", choices=("b", "a")), "b"),
])
def test_midpoint_is_a_legal_point_in_the_middle(param: Param, expected: object) -> None:
    got = param.midpoint()
    assert got == pytest.approx(expected) and type(got) is type(expected)
    if param.kind != "categorical":
        assert param.low <= got <= param.high
    if param.step is not None and not param.log:
        assert (got - param.low) / param.step == pytest.approx(round((got - param.low)
                                                                     / param.step))


def test_the_trainer_config_is_validated_at_the_midpoint(tmp_path: Path) -> None:
    """Before any trial the workload's config is built with each parameter at its midpoint:
    the error shows the value it was given."""
    text = TOY.replace("[trainer]\nepochs = 2\n", "") + \
        '\n[search_space.epochs]\ntype = "int"\nlow = -4\nhigh = 0\n'
    with pytest.raises(UserError, match=r"epochs must be >= 1, got -2"):
        load_study_spec(str(write(tmp_path, text)))


def test_the_net_sharpe_and_turnover_are_objectives_and_cost_bps_a_setting(
        tmp_path: Path) -> None:
    text = """
workload = "atft_gat"
n_trials = 2
[[objectives]]
metric = "sharpe_net"
direction = "maximize"
[[objectives]]
metric = "turnover"
direction = "minimize"
[data]
cost_bps = 10.0
"""
    spec = load_study_spec(str(write(tmp_path, text, "net.toml")))
    assert spec.metric_names == ["sharpe_net", "turnover"]
    assert spec.fixed_settings()["cost_bps"] == 10.0
    with pytest.raises(UserError, match=r"cost_bps"):
        load_study_spec(str(write(tmp_path, text.replace("10.0", "-1.0"), "bad.toml")))


def test_storage_settings_follow_one_rule_in_the_file_and_on_the_command_line(
        tmp_path: Path) -> None:
    """[storage] and hpo.run's flags are checked by the same StorageSpec.problems."""
    from hpo.config import StorageSpec
    from hpo.run import apply_storage_overrides

    text = TOY + "\n[storage]\nheartbeat_interval = 10\ngrace_period = 10\nmax_retry = -1\n"
    with pytest.raises(UserError) as err:
        load_study_spec(str(write(tmp_path, text)))
    for key, problem in StorageSpec(10, 10, -1).problems():
        assert f"[storage.{key}] {problem}" in str(err.value)
    spec = load_study_spec(str(write(tmp_path, TOY)))
    with pytest.raises(UserError, match=r"^--grace-period \(10 s\) must be longer than the "
                       r"heartbeat interval \(10 s\).*; --max-retry must be >= 0, got -1$"):
        apply_storage_overrides(spec, {"heartbeat_interval": 10, "grace_period": 10,
                                       "max_retry": -1})
