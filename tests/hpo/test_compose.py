"""docker-compose.yml: parses, wires postgres + dashboard + workers, and only runs real commands.

No Docker engine runs here, so the file is checked the way Compose reads it: YAML with merge
keys, ``${VAR:-default}`` interpolation from ``.env.example``, and every ``python -m`` command
must name a module of this project whose ``--help`` exits 0 and lists each flag used.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpo.config import resolve_study_path
from tests.conftest import REPO

COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
_VAR = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::(?P<op>[-?])(?P<arg>[^}]*))?\}")


def read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's substitution: ${VAR}, ${VAR:-default}, ${VAR:?error}; $$ is a literal $."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        name, op, arg = m["name"], m["op"], m["arg"]
        if env.get(name):
            return env[name]
        if op == "-":
            return arg
        raise KeyError(f"${{{name}}} is unset: {arg or 'no default'}")

    return _VAR.sub(sub, value.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())
    return interpolate(raw, read_env(ENV_EXAMPLE))


def test_compose_parses_and_wires_the_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"db", "dashboard", "worker"}
    db = services["db"]
    assert db["image"].startswith("postgres:")
    volume = db["volumes"][0].split(":")
    assert volume[1] == "/var/lib/postgresql/data" and volume[0] in compose["volumes"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    for name in ("dashboard", "worker"):
        service = services[name]
        assert service["depends_on"]["db"]["condition"] == "service_healthy"
        assert service["environment"]["HPO_STORAGE"] == (
            "postgresql+psycopg2://hpo:change-me@db:5432/hpo")
        assert (REPO / service["build"]["dockerfile"]).is_file()
    worker = services["worker"]
    # scalable with --scale worker=N: no fixed name, no host port
    assert "container_name" not in worker and "ports" not in worker
    assert worker["command"][:5] == ["python", "-m", "hpo.run", "--study", "demo"]
    # workers share one output volume, so a retried trial finds its predecessor's checkpoint
    assert services["dashboard"]["volumes"] == worker["volumes"] == ["output:/app/output"]


def test_credentials_come_from_the_env_file() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    text = COMPOSE.read_text()
    assert "change-me" not in text  # no password in the compose file itself
    assert raw["services"]["db"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?")
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()
    # every variable without a default is defined in .env.example
    env = read_env(ENV_EXAMPLE)
    for m in _VAR.finditer(text):
        if m["op"] != "-":
            assert m["name"] in env, f"${{{m['name']}}} is used but not in .env.example"
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(raw, {})  # without .env, Compose refuses instead of using no password


def test_worker_default_study_follows_the_brief() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    assert "${HPO_STUDY:-production}" in raw["services"]["worker"]["command"]


def _python_module_commands(compose: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    found = []
    for name, service in compose["services"].items():
        cmd = service.get("command")
        if isinstance(cmd, list) and cmd[:2] == ["python", "-m"]:
            found.append((name, cmd[2], cmd[3:]))
    return found


def test_every_command_is_a_real_entry_point(compose: dict[str, Any]) -> None:
    commands = _python_module_commands(compose)
    assert {m for _, m, _ in commands} == {"hpo.dashboard", "hpo.run"}
    for service, module, args in commands:
        assert importlib.util.find_spec(module) is not None, f"{service}: no module {module}"
        proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{service}: {module} --help: {proc.stderr[-2000:]}"
        for flag in (a for a in args if a.startswith("--")):
            assert flag in proc.stdout, f"{service}: {module} has no flag {flag}"
    # the study the worker runs (from .env.example) exists in studies/
    worker = dict(compose["services"])["worker"]["command"]
    assert resolve_study_path(worker[worker.index("--study") + 1]).is_file()
