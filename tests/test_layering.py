"""The layers point one way: hpo -> trainers -> (losses, cache).

``cache/`` and ``losses/`` import nothing of ``trainers`` or ``hpo``; ``trainers/`` imports
neither ``optuna`` nor ``hpo``. Checked twice: statically (every import statement of every
module, wherever it sits: top level, in a function, under TYPE_CHECKING) and by importing the
packages in a fresh interpreter, where no module imported earlier can hide a violation.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO

FORBIDDEN = {
    "cache": {"trainers", "hpo"},
    "losses": {"trainers", "hpo"},
    "trainers": {"hpo", "optuna"},
}


def _imported_tops(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import, and importlib.import_module("x")."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("import_module", "__import__") and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value.split(".")[0]))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_statement_crosses_a_layer(package: str) -> None:
    forbidden = FORBIDDEN[package]
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"no modules under {package}/"
    violations = []
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        violations += [f"{path.relative_to(REPO)}:{line} imports {top}"
                       for line, top in _imported_tops(tree) if top in forbidden]
    assert not violations, (f"{package}/ must not import {' or '.join(sorted(forbidden))}:\n"
                            + "\n".join(violations))


@pytest.mark.parametrize(("statement", "forbidden"), [
    ("import cache, cache.build, cache.info, cache.testing", {"trainers", "hpo", "optuna"}),
    ("import losses", {"trainers", "hpo", "optuna"}),
    ("import trainers.runtime, trainers.cli, trainers.registry", {"hpo", "optuna"}),
])
def test_a_fresh_interpreter_loads_no_upper_layer(statement: str, forbidden: set[str]) -> None:
    code = f"import sys; {statement}; print(' '.join(sorted(set(sys.modules))))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    loaded = {name.split(".")[0] for name in out.split()}
    assert not forbidden & loaded, f"{statement!r} loaded {sorted(forbidden & loaded)}"


def test_every_workload_loads_without_hpo_or_optuna() -> None:
    code = ("import sys, trainers.registry as r\n"
            "for name in r.workload_names(): r.get_workload(name)\n"
            "print(' '.join(sorted(set(sys.modules))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    loaded = {name.split(".")[0] for name in out.split()}
    assert not {"hpo", "optuna"} & loaded


def test_workloads_use_only_the_public_runtime() -> None:
    """Workload packages import ``trainers.runtime``, never its modules."""
    violations = []
    for path in sorted((REPO / "trainers").glob("*/*.py")):
        if path.parent.name == "runtime":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.ImportFrom) and node.module
                    and node.module.startswith("trainers.runtime.")):
                violations.append(f"{path.relative_to(REPO)}:{node.lineno} imports "
                                  f"{node.module}")
    assert not violations, "import from trainers.runtime instead:\n" + "\n".join(violations)

