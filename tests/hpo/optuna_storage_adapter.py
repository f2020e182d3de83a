"""pytest plugin that runs Optuna's own storage tests against the service's storage.

Loaded with ``-p optuna_storage_adapter`` by ``tests/hpo/test_optuna_storage_suite.py`` into a
pytest run over ``tests/storages_tests/test_storages.py`` and ``test_heartbeat.py`` of the
Optuna sdist (never copied into this repository). It makes Optuna's ``StorageSupplier`` hand
out, for its RDB modes (``sqlite`` and ``cached_sqlite``: the storage bare, and wrapped in
Optuna's ``_CachedStorage`` as ``create_study`` wraps it), a storage opened by
``hpo.storage.open_storage`` on a fresh SQLite file or a fresh PostgreSQL database. The other
modes (in-memory, journal, gRPC) test other storages and are dropped from the run.

Environment (set by the test module):
  HPO_SUITE_BACKEND    sqlite | postgres
  HPO_SUITE_HEARTBEAT  on | off. "on": a storage the test asked for without heartbeats gets
                       them anyway (interval 60 s, grace period 120 s), so every case runs
                       with the code paths heartbeats switch on; a test's own settings win.
  HPO_SUITE_STORAGE    service (``open_storage``) | plain (Optuna's ``RDBStorage`` with the
                       same engine settings: the baseline a case must also fail on to be
                       listed in ``KNOWN_FAILURES``)
  HPO_SUITE_PG_ADMIN_URL  a PostgreSQL URL allowed to create and drop databases
  HPO_SUITE_MODE       rdb (the two RDB modes above) | grpc: Optuna's ``grpc_rdb`` mode, where
                       the server side is what ``python -m hpo.proxy`` serves (the service
                       storage in Optuna's cache) and the client is the service's
                       ``HeartbeatGrpcStorageProxy``, with the test's heartbeat settings (the
                       heartbeat tests run in this mode too: the client is what adds them)
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Any

import optuna
import optuna.testing.storages as optuna_storages
import pytest

RDB_MODES = ["sqlite", "cached_sqlite"]
HEARTBEAT_ON_DEFAULTS = {"heartbeat_interval": 60, "grace_period": 120}
ACCEPTED_ARGS = {"heartbeat_interval", "grace_period", "heartbeat_stale_trial_callback"}

# Cases that fail on plain RDBStorage through this adapter as well, by backend:
# {backend: {test id substring: reason}}. They are marked xfail(strict) for both storages,
# so a case that starts passing (or a new failure) is reported.
KNOWN_FAILURES: dict[str, dict[str, str]] = {
    "sqlite": {},
    "postgres": {},
}

BACKEND = os.environ.get("HPO_SUITE_BACKEND", "sqlite")
HEARTBEAT = os.environ.get("HPO_SUITE_HEARTBEAT", "on")
STORAGE = os.environ.get("HPO_SUITE_STORAGE", "service")
PG_ADMIN_URL = os.environ.get("HPO_SUITE_PG_ADMIN_URL",
                              "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")

MODE = os.environ.get("HPO_SUITE_MODE", "rdb")
GRPC_MODES = ["grpc_rdb"]
SUPPLIED_MODES = GRPC_MODES if MODE == "grpc" else RDB_MODES

# Optuna's test modules read these lists when they are imported (after this plugin is).
optuna_storages.STORAGE_MODES[:] = SUPPLIED_MODES
optuna_storages.STORAGE_MODES_HEARTBEAT[:] = SUPPLIED_MODES

_original_enter = optuna_storages.StorageSupplier.__enter__
_original_exit = optuna_storages.StorageSupplier.__exit__


def _pg_admin() -> Any:
    import sqlalchemy

    return sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")



class _Postgres:
    """One database for the whole run, emptied for each storage (a CREATE DATABASE per case
    made the PostgreSQL run ~2x slower). A supplier entered while another is open (none in
    Optuna's suite today) gets a database of its own."""

    def __init__(self) -> None:
        self.shared: str | None = None
        self.in_use = False

    def url(self, name: str) -> str:
        return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"

    def create(self) -> str:
        import sqlalchemy

        name = f"hpo_optuna_suite_{uuid.uuid4().hex[:12]}"
        engine = _pg_admin()
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
                # A throwaway database need not wait for its commits to reach the disk; the
                # storage's own settings are untouched.
                conn.execute(sqlalchemy.text(
                    f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
        finally:
            engine.dispose()
        return name

    def drop(self, name: str) -> None:
        import sqlalchemy

        engine = _pg_admin()
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})
                conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
        finally:
            engine.dispose()

    def acquire(self) -> tuple[str, bool]:
        """(database name, whether it is the shared one)."""
        import sqlalchemy

        if self.in_use:
            return self.create(), False
        if self.shared is None:
            self.shared = self.create()
        engine = sqlalchemy.create_engine(self.url(self.shared), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                # Connections a previous case left behind (its subprocesses) hold locks.
                conn.execute(sqlalchemy.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": self.shared})
                # Emptied, not dropped: one TRUNCATE instead of re-creating Optuna's schema
                # (~40 DDL statements) for every case. Ids restart as in a new database; the
                # schema version rows stay, as Optuna writes them once per database.
                tables = conn.execute(sqlalchemy.text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND "
                    "tablename NOT IN ('version_info', 'alembic_version')")).scalars().all()
                if tables:
                    names = ", ".join(f'"{t}"' for t in tables)
                    conn.execute(sqlalchemy.text(
                        f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        finally:
            engine.dispose()
        self.in_use = True
        return self.shared, True

    def release(self, name: str, shared: bool) -> None:
        if shared:
            self.in_use = False
        else:
            self.drop(name)


_POSTGRES = _Postgres()


def _fresh_url(supplier: Any) -> str:
    if BACKEND == "postgres":
        name, shared = _POSTGRES.acquire()
        supplier._hpo_pg_db = (name, shared)
        return _POSTGRES.url(name)
    # As Optuna's supplier does: a temporary file that the supplier closes (and so deletes).
    from optuna.testing.tempfile_pool import NamedTemporaryFilePool

    supplier.tempfile = NamedTemporaryFilePool().tempfile()
    return f"sqlite:///{supplier.tempfile.name}"


def _settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The supplier's storage arguments, checked, with heartbeats on by default (HEARTBEAT)."""
    unknown = set(kwargs) - ACCEPTED_ARGS
    if unknown:
        raise AssertionError(f"adapter: StorageSupplier argument(s) {sorted(unknown)} not "
                             "handled; extend optuna_storage_adapter")
    if HEARTBEAT == "on" and "heartbeat_interval" not in kwargs:
        kwargs = {**HEARTBEAT_ON_DEFAULTS, **kwargs}
    return kwargs


def _open(url: str, kwargs: dict[str, Any]) -> optuna.storages.RDBStorage:
    kwargs = _settings(kwargs)
    if STORAGE == "plain":
        from hpo.storage import _engine_kwargs

        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), **kwargs)
    from hpo.storage import open_storage

    callback = kwargs.pop("heartbeat_stale_trial_callback", None)
    storage = open_storage(url, **kwargs)
    if callback is not None:  # the test's own callback replaces the service's retry callback
        storage.heartbeat_stale_trial_callback = callback
        storage.failed_trial_callback = callback
    return storage


def _enter_grpc(self: Any) -> Any:
    """Optuna's ``grpc_rdb`` supplier with the service on both sides (module docstring)."""
    from hpo.storage import open_storage
    from hpo.storage.remote import HeartbeatGrpcStorageProxy

    kwargs = _settings(dict(self.extra_args))
    self.backend_storage = open_storage(_fresh_url(self))
    served = optuna.storages.get_storage(self.backend_storage)
    with optuna_storages._lock_to_search_for_free_port():
        port = optuna_storages._find_free_port()
        self.server = optuna.storages._grpc.server.make_server(served, "localhost", port)
        self.thread = threading.Thread(target=self.server.start)
        self.thread.start()
        self.proxy = HeartbeatGrpcStorageProxy(host="localhost", port=port, **kwargs)
        self.proxy.wait_server_ready(timeout=60)
    self.storage = self.proxy
    return self.storage


def _enter(self: Any) -> Any:
    if self.storage_specifier in GRPC_MODES and MODE == "grpc":
        return _enter_grpc(self)
    if self.storage_specifier not in RDB_MODES:
        return _original_enter(self)
    storage = _open(_fresh_url(self), dict(self.extra_args))
    self.storage = (optuna.storages._CachedStorage(storage)
                    if self.storage_specifier == "cached_sqlite" else storage)
    return self.storage


def _exit(self: Any, *exc: Any) -> None:
    name = self.tempfile.name if self.tempfile else None
    try:
        _original_exit(self, *exc)
    finally:
        if name:  # SQLite's write-ahead log files beside the study file
            for suffix in ("-wal", "-shm"):
                Path(name + suffix).unlink(missing_ok=True)
        db = getattr(self, "_hpo_pg_db", None)
        if db:
            self._hpo_pg_db = None
            _POSTGRES.release(*db)


optuna_storages.StorageSupplier.__enter__ = _enter  # type: ignore[method-assign]
optuna_storages.StorageSupplier.__exit__ = _exit  # type: ignore[method-assign]


# Cases of Optuna's heartbeat tests that cannot hold through a gRPC proxy, with the reason.
GRPC_EXPECTED_FAILURES = {
    "test_heartbeat_experimental_warnings": "it counts exactly one ExperimentalWarning; "
    "Optuna's GrpcStorageProxy (the client's base class) is experimental and warns as well",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if MODE == "grpc":
            for fragment, reason in GRPC_EXPECTED_FAILURES.items():
                if fragment in item.nodeid:
                    item.add_marker(pytest.mark.xfail(reason=reason, strict=False))
        for fragment, reason in KNOWN_FAILURES.get(BACKEND, {}).items():
            if fragment in item.nodeid:
                item.add_marker(pytest.mark.xfail(reason=reason, strict=True))


def pytest_unconfigure() -> None:
    if _POSTGRES.shared is not None:
        _POSTGRES.drop(_POSTGRES.shared)


def pytest_report_header() -> str:
    return (f"optuna storage suite: mode={MODE} storage={STORAGE} backend={BACKEND} "
            f"heartbeats={HEARTBEAT} optuna={optuna.__version__}")
