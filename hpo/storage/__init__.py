"""Storage URL -> Optuna RDB storage, with pooling, heartbeats and retry of dead trials.

Optuna's RDB storage is the coordination engine for many workers and hosts; this module only
chooses its settings: ``pool_pre_ping`` (PostgreSQL restarts), a small pool per process (many
workers must not exhaust the server's connection limit), heartbeats, the callback that
re-enqueues a trial whose worker died, and SQLite's write-ahead log. The storage class itself
(:class:`hpo.storage.service.ServiceRDBStorage`) keeps Optuna's semantics: Optuna's own storage
tests pass against it.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hpo.storage.errors import short_reason
from trainers.errors import UserError

log = logging.getLogger("hpo")

ENV_VAR = "HPO_STORAGE"
DEFAULT_DB_NAME = "hpo.db"

# Each worker process needs ~2 connections (the trial loop + the heartbeat thread); a pool of
# 2 with 2 overflow keeps 25 workers under PostgreSQL's default limit of 100 clients.
PG_POOL_SIZE = 2
PG_MAX_OVERFLOW = 2
CONNECT_TIMEOUT_S = 10


def resolve_url(cli_url: str | None, output_dir: Path) -> str:
    """``--storage``, else ``$HPO_STORAGE``, else an embedded SQLite file under ``output_dir``."""
    url = cli_url or os.environ.get(ENV_VAR) or ""
    if url:
        return url
    return f"sqlite:///{(Path(output_dir) / DEFAULT_DB_NAME).resolve()}"


_PASSWORD = re.compile(r"(?P<head>[a-z0-9+]+://[^:/@]*:)(?P<pw>[^@]*)(?P<tail>@)", re.I)


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``: safe to print, log or store."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", url)


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("postgresql"):
        kwargs: dict[str, Any] = {
            "pool_pre_ping": True,
            "pool_size": PG_POOL_SIZE,
            "max_overflow": PG_MAX_OVERFLOW,
            "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S},
        }
        return kwargs
    if url.startswith("sqlite"):
        # Several worker processes share the file: wait for the write lock instead of failing.
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def check_sqlite_parent(url: str) -> None:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.parent.exists():
            raise UserError(f"storage {url!r}: directory {str(path.parent)!r} does not exist; "
                            "create it or choose another path")


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = 2,
) -> Any:
    """Open (and create the schema of) the study storage at ``url``.

    Connection problems become a ``UserError`` naming the masked URL; the password never
    appears in the message.
    """
    import sqlalchemy.engine
    import sqlalchemy.exc

    if "://" not in url:
        raise UserError(f"storage {url!r} is not a URL; use e.g. sqlite:///output/hpo.db or "
                        "postgresql+psycopg2://user:password@host:5432/dbname")
    if url.startswith("grpc://"):
        return _open_grpc(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                          max_retry=max_retry)
    check_sqlite_parent(url)
    try:
        sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as exc:
        raise UserError(f"bad storage URL {mask_url(url)}: {short_reason(exc)}") from None
    from hpo.storage.service import ServiceRDBStorage

    callback = _stale_trial_callback(heartbeat_interval, max_retry)
    try:
        for attempt in range(1, SCHEMA_RACE_ATTEMPTS + 1):
            try:
                storage = ServiceRDBStorage(
                    url,
                    engine_kwargs=_engine_kwargs(url),
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=callback,
                )
                _use_sqlite_wal(storage.engine)
                return storage
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError,
                    sqlalchemy.exc.OperationalError) as exc:
                if attempt == SCHEMA_RACE_ATTEMPTS or not _is_schema_race(exc):
                    raise
                # Another process is creating the schema of this fresh database right now
                # (workers on several hosts, or `hpo.status` started with the first worker):
                # whatever it created is skipped on the next attempt.
                time.sleep(random.uniform(0.1, 0.5))
        raise AssertionError("unreachable")
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        raise UserError(f"cannot connect to storage {mask_url(url)}: {short_reason(exc)}; "
                        "check the host, port, database name and credentials") from None
    # A ValueError (a bad heartbeat setting) is Optuna's own, raised as Optuna raises it.
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError,
            ImportError) as exc:
        raise UserError(f"bad storage URL {mask_url(url)}: {short_reason(exc)}") from None


class CrashRetryCallback:
    """Optuna's ``RetryHeartbeatStaleTrialCallback`` (it re-enqueues a trial whose heartbeat
    stopped), with ``max_retry`` counting crashes only: the retries after a preemption
    (SIGTERM, user attr ``preempted``) are not charged, so a trial preempted three times still
    gets its ``max_retry`` retries after a real crash. The enqueued copy is Optuna's."""

    def __init__(self, max_retry: int | None) -> None:
        import optuna

        with warnings.catch_warnings():
            # Chosen here, not by the user: Optuna warns once, for heartbeat_interval.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)
        self.max_retry = max_retry

    def __call__(self, study: Any, trial: Any) -> None:
        if self.max_retry is not None:
            retries = len(trial.system_attrs.get("retry_history") or []) + 1
            preempted = (trial.user_attrs.get("preempted") or {}).get("count", 0)
            if retries - int(preempted) > self.max_retry:
                return
        self._retry(study, trial)


def _stale_trial_callback(heartbeat_interval: int | None, max_retry: int | None) -> Any:
    """The callback that re-enqueues a trial whose heartbeat stopped (None without
    heartbeats)."""
    if heartbeat_interval is None:
        return None
    return CrashRetryCallback(max_retry)


def _open_grpc(url: str, *, heartbeat_interval: int | None, grace_period: int | None,
               max_retry: int | None) -> Any:
    """A ``grpc://HOST:PORT`` storage: the client of ``python -m hpo.proxy``
    (:mod:`hpo.storage.remote`)."""
    try:
        import grpc  # noqa: F401 - the proxy client needs it
    except ImportError:
        raise UserError("a grpc:// storage needs grpcio and protobuf: pip install grpcio "
                        "protobuf") from None
    from hpo.storage.remote import open_grpc_storage

    return open_grpc_storage(url, heartbeat_interval=heartbeat_interval,
                             grace_period=grace_period,
                             heartbeat_stale_trial_callback=_stale_trial_callback(
                                 heartbeat_interval, max_retry))


def _use_sqlite_wal(engine: Any) -> None:
    """Put a SQLite study file in write-ahead-log mode (a setting of the file, kept).

    Each commit then appends to the log with one fsync instead of rewriting a rollback
    journal (0.19 ms instead of 0.72 ms per commit measured here; ``synchronous`` stays FULL,
    so a committed trial survives a power cut), and readers (``hpo.status``, the dashboard,
    other workers' samplers) no longer block a worker's write. All processes must be on the
    same host, as SQLite's locking needs anyway. If another process holds the file busy the
    switch is left to the next opening."""
    import sqlalchemy.exc

    if engine.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return
    try:
        with engine.connect() as conn:
            if conn.exec_driver_sql("PRAGMA journal_mode").scalar() != "wal":
                busy = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
                conn.exec_driver_sql("PRAGMA busy_timeout=2000")  # don't wait a minute here
                try:
                    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                finally:
                    conn.exec_driver_sql(f"PRAGMA busy_timeout={int(busy)}")
    except sqlalchemy.exc.OperationalError as exc:
        log.debug("SQLite write-ahead log not enabled now (%s)", short_reason(exc))


@contextmanager
def worker_trials(study: Any) -> Iterator[None]:
    """Trials that this thread starts inside the block (``study.optimize`` of the service's
    worker) are born with their first heartbeat; see :mod:`hpo.storage.service`. A storage of
    another kind is left as it is."""
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDBStorage in a cache
    hook = getattr(backend, "worker_trials", None)
    if hook is None:
        yield
        return
    with hook():
        yield


SCHEMA_RACE_ATTEMPTS = 10


def _is_schema_race(exc: BaseException) -> bool:
    """Errors two processes get when both create the tables of a fresh database at once."""
    import sqlalchemy.exc

    text = str(getattr(exc, "orig", None) or exc).lower()
    return isinstance(exc, sqlalchemy.exc.IntegrityError) or "already exists" in text
