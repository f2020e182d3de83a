"""The README is the user's manual: every command and every option it offers is documented."""

from __future__ import annotations

import argparse
import importlib

import pytest

from tests.conftest import REPO

COMMANDS = ["hpo.run", "hpo.status", "hpo.export", "hpo.evaluate", "hpo.predict", "hpo.refit",
            "hpo.proxy", "hpo.launch", "hpo.dashboard", "cache.build"]


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [opt for action in parser._actions if action.help != argparse.SUPPRESS
            for opt in action.option_strings if opt.startswith("--") and opt != "--help"]


@pytest.mark.parametrize("module", COMMANDS)
def test_every_option_is_in_the_readme(module: str) -> None:
    readme = (REPO / "README.md").read_text()
    assert f"python -m {module}" in readme
    parser = importlib.import_module(module).build_parser()
    assert parser.description and "python -m" in (parser.description + (parser.epilog or ""))
    missing = [opt for opt in _options(parser) if opt not in readme]
    assert not missing, f"{module}: options missing from README.md: {missing}"


def test_readme_commands_are_what_ci_runs() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make test" in ci
    assert "make demo" in readme


def test_every_pruner_and_its_keys_are_in_the_readme() -> None:
    """Study-file keys are options too: each [pruner] name and key has its line."""
    from hpo.config import PRUNER_KEYS, PrunerSpec

    readme = (REPO / "README.md").read_text()
    missing = [f"{name}" for name in PRUNER_KEYS if f"`{name}`" not in readme]
    missing += [key for keys in PRUNER_KEYS.values() for key in keys
                if f"`{key}`" not in readme]
    assert not missing, f"[pruner] names/keys missing from README.md: {missing}"
    assert {k for keys in PRUNER_KEYS.values() for k in keys} | {"name"} == \
        set(PrunerSpec.__dataclass_fields__)
