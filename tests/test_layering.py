"""The layers point one way: hpo -> trainers -> (losses, cache).

``cache/`` and ``losses/`` import nothing of ``trainers`` or ``hpo``; ``trainers/`` imports
neither ``optuna`` nor ``hpo``. Checked twice: statically (every import statement of every
module, wherever it sits: top level, in a function, under TYPE_CHECKING) and by importing the
packages in a fresh interpreter, where no module imported earlier can hide a violation.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

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




CYCLE_PACKAGES = ("hpo", "trainers", "cache", "losses")


def _project_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of ``CYCLE_PACKAGES`` (a package is its __init__)."""
    modules = {}
    for package in CYCLE_PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported_modules(tree: ast.AST, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules that module ``name`` imports, wherever the statement sits.

    ``from hpo import attrs`` is an edge to ``hpo.attrs`` when that is a module, else to
    ``hpo``; relative imports are resolved against ``name``'s package. ``import a.b.c`` is an
    edge to ``a.b.c`` only: the packages above it run first, but an edge to each would make a
    cycle of every package whose ``__init__`` imports its own modules.
    """
    package = name if modules[name].name == "__init__.py" else name.rpartition(".")[0]

    def known(dotted: str) -> str | None:  # the longest prefix of ``dotted`` that is a module
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    found: set[str | None] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {known(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # ``from . import x`` in a.b.c is a.b; each further dot one up
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules
                      else known(base) for alias in node.names}
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("import_module", "__import__") and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(known(node.args[0].value))
    return {m for m in found if m is not None and m != name}


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components of ``graph``, without recursion."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        work = [(root, iter(sorted(graph[root])))]
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:  # go deeper; this node's other edges wait on the stack
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in stack:
                    low[node] = min(low[node], index[nxt])
            else:  # every edge of ``node`` seen
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = {node}
                    while (member := stack.pop()) != node:
                        component.add(member)
                    components.append(component)
    return components


def _cycle_through(component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest cycle through the component's first module, ending where it began."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        here = queue.pop(0)
        for there in sorted(graph[here] & component):
            if there == start:
                return paths[here] + [start]
            if there not in paths:
                paths[there] = paths[here] + [there]
                queue.append(there)
    raise AssertionError(f"{sorted(component)} holds no cycle")


def test_imports_resolve_to_modules() -> None:
    """The resolver of the cycle test, on statements the project has none of today."""
    source = ("from . import model\nfrom .config import X\nfrom ..runtime import step\n"
              "from hpo import attrs, not_a_module\nimport trainers.lm.data as data\n"
              "def f():\n    importlib.import_module('cache.build')\n")
    found = _imported_modules(ast.parse(source), "trainers.lm.train", _project_modules())
    assert found == {"trainers.lm.model", "trainers.lm.config", "trainers.runtime.step",
                     "hpo.attrs", "hpo", "trainers.lm.data", "cache.build"}
    assert _strongly_connected({"a": {"b"}, "b": {"c", "a"}, "c": {"c"}, "d": set()}) == [
        {"c"}, {"a", "b"}, {"d"}]


def test_no_module_takes_part_in_an_import_cycle() -> None:
    """Statically, module by module: every import statement (top level, in a function, under
    TYPE_CHECKING). A cycle that loads today because one side imports late still ties the two
    modules into one: neither can be read, tested or moved alone."""
    modules = _project_modules()
    graph = {name: _imported_modules(ast.parse(path.read_text(), filename=str(path)), name,
                                     modules) for name, path in modules.items()}
    assert "hpo.storage" in graph["hpo.worker"], "the import graph was not built"
    cycles = [" -> ".join(_cycle_through(c, graph))
              for c in _strongly_connected(graph) if len(c) > 1]
    assert not cycles, "modules importing each other; move what both need into one of them " \
        "or a third module:\n" + "\n".join(sorted(cycles))


PRODUCT = ("hpo", "trainers", "cache", "losses", "scripts")
MAX_MODULE_LINES = 500


def test_hpo_never_names_a_workload() -> None:
    """``hpo/`` drives every workload through ``trainers.registry`` and the capabilities a
    ``Workload`` declares: no import of a workload package, no workload name in its source."""
    from trainers.registry import _PACKAGES

    violations = []
    for path in sorted((REPO / "hpo").rglob("*.py")):
        text = path.read_text()
        for node in ast.walk(ast.parse(text, filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            violations += [f"{path.relative_to(REPO)}:{node.lineno} imports {n}" for n in names
                           if any(n == p or n.startswith(p + ".") for p in _PACKAGES.values())]
        for name in _PACKAGES:
            for match in re.finditer(rf"\b{re.escape(name)}\b", text):
                line = text.count("\n", 0, match.start()) + 1
                violations.append(f"{path.relative_to(REPO)}:{line} names workload {name!r}")
    assert not violations, "hpo/ must not know a workload by name:\n" + "\n".join(violations)


def test_no_module_over_500_lines() -> None:
    long = [f"{p.relative_to(REPO)}: {n} lines" for top in PRODUCT
            for p in sorted((REPO / top).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not long, (f"modules over {MAX_MODULE_LINES} lines (split them by theme):\n"
                      + "\n".join(long))
