"""What every hpo command shares (``hpo.cli``): one parser, one set of study flags, one rule
for a user's mistake."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from hpo.__main__ import COMMANDS
from hpo.cli import EXIT_USER, one_line_errors
from trainers.errors import UserError

HPO = Path(__file__).resolve().parents[2] / "hpo"
# hpo.launch's --storage is the workers' storage on other hosts (required, PostgreSQL or
# grpc://), hpo.dashboard's --study is optional: each states its own.
OWN_FLAGS = {("launch.py", "--storage"), ("launch.py", "--output"), ("launch.py", "--study"),
             ("dashboard.py", "--study")}


def test_a_user_error_anywhere_in_a_command_is_one_line_and_exit_2(capsys) -> None:
    @one_line_errors
    def main(argv: list[str] | None = None) -> int:
        raise UserError(f"--thing {argv[0]} is wrong; use 3")

    assert main(["7"]) == EXIT_USER
    assert capsys.readouterr().err == "error: --thing 7 is wrong; use 3\n"

    @one_line_errors
    def crashes(argv: list[str] | None = None) -> int:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):  # a bug still shows its traceback
        crashes([])


def test_the_study_flags_have_one_home() -> None:
    """No command module adds --study/--storage/--output itself (``hpo.cli.add_study_flags``
    does), bar the two that mean something else by them."""
    found = []
    for path in sorted(HPO.rglob("*.py")):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add_argument" and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and node.args[0].value in ("--study", "--storage", "--output")
                    and (path.name, node.args[0].value) not in OWN_FLAGS):
                found.append(f"{path.name}:{node.lineno} {node.args[0].value}")
    assert found == []


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_parses_its_help_and_refuses_a_bad_flag(name: str, capsys) -> None:
    module = importlib.import_module(COMMANDS[name][0])
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    assert f"python -m hpo.{name}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        module.main(["--no-such-flag"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
