"""Storage URL -> Optuna RDB storage, with pooling, heartbeats and retry of dead trials.

Optuna's RDB storage is the coordination engine for many workers and hosts; this module only
chooses its settings: ``pool_pre_ping`` (PostgreSQL restarts), a small pool per process (many
workers must not exhaust the server's connection limit), heartbeats, and the callback that
re-enqueues a trial whose worker died.

Two adjustments to Optuna's ``RDBStorage`` (class :class:`ServiceRDBStorage`), both measured:

* A heartbeat that cannot reach the database (a restarting server) is logged and retried at the
  next beat instead of killing the heartbeat thread; without this a trial that outlives a
  database restart stops beating and is failed as stale while it is still training.
* Trial user attrs are written in batches instead of one transaction per attribute (a trial
  sets ~10: metrics, history, worker, seed...): with the trial's next heartbeat, and with its
  final state in the same transaction, so the dashboard lags at most one heartbeat and nothing
  a finished trial set is lost. Reads in this process see the pending values.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
        return {
            "pool_pre_ping": True,
            "pool_size": PG_POOL_SIZE,
            "max_overflow": PG_MAX_OVERFLOW,
            "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S},
        }
    if url.startswith("sqlite"):
        # Several worker processes share the file: wait for the write lock instead of failing.
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def _short_reason(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__).strip()


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
    import optuna
    import sqlalchemy.exc

    if "://" not in url:
        raise UserError(f"storage {url!r} is not a URL; use e.g. sqlite:///output/hpo.db or "
                        "postgresql+psycopg2://user:password@host:5432/dbname")
    check_sqlite_parent(url)
    callback = None
    if heartbeat_interval is not None:
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    try:
        return _service_storage_class()(
            url,
            engine_kwargs=_engine_kwargs(url),
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=callback,
        )
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        raise UserError(f"cannot connect to storage {mask_url(url)}: {_short_reason(exc)}; "
                        "check the host, port, database name and credentials") from None
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ImportError,
            ValueError) as exc:
        raise UserError(f"bad storage URL {mask_url(url)}: {_short_reason(exc)}") from None


def storage_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the database is unreachable right now", not "this trial is bad".

    Optuna wraps SQLAlchemy errors raised inside its transactions in StorageInternalError.
    """
    import optuna
    import sqlalchemy.exc

    return (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError,
            sqlalchemy.exc.InterfaceError)


# A heartbeat that fails is reported once per outage, not once per beat.
_OUTAGE_LOG_EVERY_S = 60.0

_STORAGE_CLASS: type | None = None


def _service_storage_class() -> type:
    """Built on first use so that importing this module does not import optuna."""
    global _STORAGE_CLASS
    if _STORAGE_CLASS is None:
        _STORAGE_CLASS = _make_service_storage_class()
    return _STORAGE_CLASS


# A trial's final state is retried this long through a database outage (a restart takes
# seconds), pausing between attempts; pool_pre_ping hands out a fresh connection once it's back.
STATE_WRITE_RETRY_S = 60.0
STATE_WRITE_PAUSE_S = 1.0


def _log_retry(what: str, trial_id: int, exc: BaseException) -> None:
    log.warning(f"{what} failed (%s); retrying", trial_id, _short_reason(exc.__cause__ or exc))


def _is_outage(exc: BaseException) -> bool:
    import sqlalchemy.exc

    return isinstance(exc, storage_errors() + (sqlalchemy.exc.DBAPIError,))


def _make_service_storage_class() -> type:  # noqa: C901 - one class, kept together
    from contextlib import contextmanager

    import optuna
    import sqlalchemy.dialects.postgresql as pg_dialect
    import sqlalchemy.dialects.sqlite as sqlite_dialect
    from optuna.storages._rdb import models

    class ServiceRDBStorage(optuna.storages.RDBStorage):
        """RDBStorage with resilient heartbeats and batched trial user attrs (module doc)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._pending: dict[int, dict[str, Any]] = {}
            self._pending_lock = threading.Lock()
            self._last_outage_log = 0.0
            self._upsert_stmt: dict[str, Any] = {}

        def __getstate__(self) -> dict[Any, Any]:
            state = super().__getstate__()
            state.pop("_pending_lock", None)
            state.pop("_upsert_stmt", None)
            return state

        def __setstate__(self, state: dict[Any, Any]) -> None:
            super().__setstate__(state)
            self._pending_lock = threading.Lock()
            self._upsert_stmt = {}

        # -- batched user attrs -------------------------------------------------------------
        def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
            if self.heartbeat_interval is None:  # nobody would flush: write through
                super().set_trial_user_attr(trial_id, key, value)
                return
            with self._pending_lock:
                self._pending.setdefault(trial_id, {})[key] = value

        @contextmanager
        def _staged(self, trial_id: int) -> Iterator[Any]:
            """Stage the trial's pending attrs in this thread's session, without committing.

            Optuna's own write that follows in the block uses the same thread-local session,
            so its commit carries the attrs too (one commit instead of two). On a failure the
            attrs go back to the pending buffer (newer values win) when the database was
            unreachable, and are dropped when the trial was already finished elsewhere.
            """
            with self._pending_lock:
                attrs = self._pending.pop(trial_id, None)
            if not attrs:
                yield None
                return
            session = self.scoped_session()
            try:
                trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
                self.check_trial_is_updatable(trial_id, trial.state)
                self._upsert_user_attrs(session, trial_id, attrs)
                yield session
            except BaseException as exc:
                session.rollback()
                if _is_outage(exc):
                    with self._pending_lock:
                        self._pending[trial_id] = {**attrs, **self._pending.get(trial_id, {})}
                raise
            finally:
                session.close()

        def _upsert_user_attrs(self, session: Any, trial_id: int, attrs: dict[str, Any]) -> None:
            import json

            model = models.TrialUserAttributeModel
            dialect = {"postgresql": pg_dialect, "sqlite": sqlite_dialect}.get(self.engine.name)
            if dialect is None:
                for k, v in attrs.items():
                    self._set_trial_attr_without_commit(session, model, trial_id, k, v)
                return
            # One statement object, built once, with a parameter list (executemany): a
            # multi-row VALUES would be compiled anew for every trial.
            stmt = self._upsert_stmt.get(self.engine.name)
            if stmt is None:
                base = dialect.insert(model)
                stmt = base.on_conflict_do_update(index_elements=[model.trial_id, model.key],
                                                  set_={"value_json": base.excluded.value_json})
                self._upsert_stmt[self.engine.name] = stmt
            session.execute(stmt, [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                                   for k, v in attrs.items()])

        def set_trial_state_values(self, trial_id: int, state: Any,
                                   values: Any = None) -> bool:
            """Optuna's write, retried through a short outage: losing the result of a trial
            that finished training is the one loss a database restart must not cause."""
            deadline = time.monotonic() + STATE_WRITE_RETRY_S
            attempt = 0
            while True:
                attempt += 1
                try:
                    with self._staged(trial_id):
                        return super().set_trial_state_values(trial_id, state=state,
                                                              values=values)
                except optuna.exceptions.UpdateFinishedTrialError:
                    if attempt > 1 and state.is_finished():
                        # the earlier attempt was committed; only its answer was lost
                        return True
                    raise
                except BaseException as exc:
                    if not _is_outage(exc) or time.monotonic() >= deadline:
                        raise
                    _log_retry("storing the state of trial id %d", trial_id, exc)
                    time.sleep(STATE_WRITE_PAUSE_S)

        def get_trial(self, trial_id: int) -> Any:
            deadline = time.monotonic() + STATE_WRITE_RETRY_S
            while True:
                try:
                    return self._with_pending(super().get_trial(trial_id))
                except BaseException as exc:
                    if not _is_outage(exc) or time.monotonic() >= deadline:
                        raise
                    _log_retry("reading trial id %d", trial_id, exc)
                    time.sleep(STATE_WRITE_PAUSE_S)

        def _get_trials(self, *args: Any, **kwargs: Any) -> Any:
            trials = super()._get_trials(*args, **kwargs)
            return [self._with_pending(t) for t in trials] if self._pending else trials

        def _with_pending(self, trial: Any) -> Any:
            """This process reads its own pending attrs (read-your-writes without a write)."""
            with self._pending_lock:
                pending = dict(self._pending.get(trial._trial_id) or {})
            if pending:
                trial.user_attrs.update(pending)
            return trial

        # -- heartbeats that survive a database restart -------------------------------------
        def record_heartbeat(self, trial_id: int) -> None:
            try:
                with self._staged(trial_id):
                    super().record_heartbeat(trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                # Another worker declared this trial dead (no beat within the grace period);
                # its retry is queued already. The attrs of this attempt are dropped.
                with self._pending_lock:
                    self._pending.pop(trial_id, None)
            except Exception as exc:
                if not _is_outage(exc):
                    raise
                now = time.monotonic()
                if now - self._last_outage_log >= _OUTAGE_LOG_EVERY_S:
                    self._last_outage_log = now
                    log.warning("heartbeat of trial id %d could not reach the storage (%s); "
                                "retrying at the next beat", trial_id, _short_reason(
                                    exc.__cause__ or exc))

    return ServiceRDBStorage
