"""The README and docs/ are the user's manual: every command and every option it offers is
documented, the README stays a short front page, and every link in them leads somewhere."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

COMMANDS = ["hpo.run", "hpo.status", "hpo.export", "hpo.evaluate", "hpo.predict", "hpo.refit",
            "hpo.proxy", "hpo.launch", "hpo.dashboard", "cache.build", "hpo.init", "hpo.monitor"]
README_MAX_LINES = 300


def manual_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def manual() -> str:
    return "\n".join(path.read_text() for path in manual_files())


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, in_code = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            found.add(slug(line.lstrip("#")))
    return found


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [opt for action in parser._actions if action.help != argparse.SUPPRESS
            for opt in action.option_strings if opt.startswith("--") and opt != "--help"]


@pytest.mark.parametrize("module", COMMANDS)
def test_every_option_is_in_the_manual(module: str) -> None:
    readme = manual()
    assert f"python -m {module}" in (REPO / "README.md").read_text()
    parser = importlib.import_module(module).build_parser()
    assert parser.description and "python -m" in (parser.description + (parser.epilog or ""))
    missing = [opt for opt in _options(parser) if opt not in readme]
    assert not missing, f"{module}: options missing from README.md and docs/: {missing}"


def test_readme_commands_are_what_ci_runs() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make test" in ci
    assert "make demo" in readme


def test_every_pruner_and_its_keys_are_in_the_manual() -> None:
    """Study-file keys are options too: each [pruner] name and key has its line."""
    from hpo.config import PRUNER_KEYS, PrunerSpec

    readme = manual()
    missing = [f"{name}" for name in PRUNER_KEYS if f"`{name}`" not in readme]
    missing += [key for keys in PRUNER_KEYS.values() for key in keys
                if f"`{key}`" not in readme]
    assert not missing, f"[pruner] names/keys missing from README.md and docs/: {missing}"
    assert {k for keys in PRUNER_KEYS.values() for k in keys} | {"name"} == \
        set(PrunerSpec.__dataclass_fields__)


def test_the_readme_is_a_front_page_and_every_link_leads_somewhere() -> None:
    readme = (REPO / "README.md").read_text().splitlines()
    assert len(readme) <= README_MAX_LINES, f"README.md has {len(readme)} lines"
    broken = []
    for path in manual_files():
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                broken.append(f"{path.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{path.name}: {target} (no such heading)")
    assert not broken, broken
