"""Shared fixtures: a fresh database per test on every storage backend the machine has."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get("HPO_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
REPO = Path(__file__).resolve().parent.parent


def _pg_admin():
    import sqlalchemy

    engine = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT",
                                      connect_args={"connect_timeout": 3})
    return engine


def postgres_available() -> str | None:
    """None when PostgreSQL is reachable, else the reason it is not."""
    try:
        import sqlalchemy

        with _pg_admin().connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
        return None
    except Exception as exc:  # any failure means "skip", with the reason shown
        return f"PostgreSQL not reachable at {PG_ADMIN_URL.split('@')[-1]}: " \
               f"{str(exc).splitlines()[0]}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database, dropped after the test."""
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    import sqlalchemy

    name = f"hpo_test_{uuid.uuid4().hex[:12]}"
    engine = _pg_admin()
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name})
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same contract runs against every storage backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hpo.db'}"
    return request.getfixturevalue("pg_url")


def run_cli(args: list[str], *, cwd: Path = REPO, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` as a user would, from the repository root."""
    import sys

    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[object]:
    """``tmpfs(size_mb)``: a real tmpfs of that size mounted under ``tmp_path`` (unmounted
    after the test); the test is skipped where the machine refuses the mount."""
    mounted: list[Path] = []

    def mount(size_mb: int) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs",
                               str(point)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip() or 'not root'}")
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in mounted:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)
