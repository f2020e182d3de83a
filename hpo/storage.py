"""Storage URL -> Optuna RDB storage, with pooling, heartbeats and retry of dead trials.

Optuna's RDB storage is the coordination engine for many workers and hosts; this module only
chooses its settings: ``pool_pre_ping`` (PostgreSQL restarts), a small pool per process (many
workers must not exhaust the server's connection limit), heartbeats, and the callback that
re-enqueues a trial whose worker died.

Adjustments to Optuna's ``RDBStorage`` (class :class:`ServiceRDBStorage`), each measured:

* A heartbeat that cannot reach the database (a restarting server) is logged and retried at the
  next beat instead of killing the heartbeat thread; without this a trial that outlives a
  database restart stops beating and is failed as stale while it is still training.
* A trial's first heartbeat is written in the transaction that makes it RUNNING (created, or
  taken from the queue), not by a separate commit from the heartbeat thread a moment later.
  This closes a gap in Optuna's scheme, whose stale check ignores RUNNING trials without a
  heartbeat row: a worker killed between creating a trial and its first beat left a zombie
  that no worker ever reclaimed. The heartbeat thread's own first beat, which would repeat it,
  is skipped; the next comes one interval later, as before.
* The stale-trial check is one query (Optuna's takes three round trips and an empty commit).
* A trial's params, user attrs, and the dashboard's artifact records are written in batches
  instead of one transaction each (a trial sets ~3-10 params and ~10 attrs: metrics, history,
  worker, seed...): params and setup attrs together when the worker has set the trial up
  (:func:`flush_trial`, before training starts, so other workers' samplers see the params),
  later attrs with the trial's next heartbeat, and the rest with its final state in the same
  transaction: the dashboard lags at most one heartbeat and nothing a finished trial set is
  lost. Optuna's checks (trial still running, distribution compatible with the study's) are
  made when the value is set, as before. Reads in this process see the staged values. System
  attrs that samplers and pruners share between workers are still written at once, except
  TPE's relative-params record, which is flushed with the params it describes.
"""

from __future__ import annotations

import logging
import os
import random
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
        kwargs: dict[str, Any] = {
            "pool_pre_ping": True,
            "pool_size": PG_POOL_SIZE,
            "max_overflow": PG_MAX_OVERFLOW,
            "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S},
        }
        if _driver(url) == "psycopg2":
            # psycopg2's executemany sends one statement per row: 8 trial attrs took 1.0 ms
            # on a local server, 0.37 ms as one batch (and a round trip each over a network).
            kwargs["executemany_mode"] = "values_plus_batch"
        return kwargs
    if url.startswith("sqlite"):
        # Several worker processes share the file: wait for the write lock instead of failing.
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def _driver(url: str) -> str | None:
    try:
        import sqlalchemy.engine

        return sqlalchemy.engine.make_url(url).get_driver_name()
    except Exception:  # a bad URL is reported when the storage is opened
        return None


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
        for attempt in range(1, SCHEMA_RACE_ATTEMPTS + 1):
            try:
                storage = _service_storage_class()(
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
        raise UserError(f"cannot connect to storage {mask_url(url)}: {_short_reason(exc)}; "
                        "check the host, port, database name and credentials") from None
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ImportError,
            ValueError) as exc:
        raise UserError(f"bad storage URL {mask_url(url)}: {_short_reason(exc)}") from None


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
        log.debug("SQLite write-ahead log not enabled now (%s)", _short_reason(exc))


def fail_stale_trials(study: Any) -> None:
    """Fail (and so queue for retry) the study's stale RUNNING trials now."""
    import optuna

    backend = getattr(study._storage, "_backend", study._storage)
    if hasattr(backend, "expire_stale_check"):
        backend.expire_stale_check()
    optuna.storages.fail_stale_trials(study)


def flush_trial(trial: Any) -> None:
    """Write the trial's staged params and attrs now, in one transaction.

    The worker calls it when a trial's setup is done (params suggested, first attrs set),
    before training starts: from then on other workers' samplers see the trial's params
    (constant liar) and the dashboard its attrs. A storage without staging does nothing."""
    storage = trial.study._storage
    backend = getattr(storage, "_backend", storage)
    if hasattr(backend, "flush"):
        backend.flush(trial._trial_id)


SCHEMA_RACE_ATTEMPTS = 10


def _is_schema_race(exc: BaseException) -> bool:
    """Errors two processes get when both create the tables of a fresh database at once."""
    import sqlalchemy.exc

    text = str(getattr(exc, "orig", None) or exc).lower()
    return isinstance(exc, sqlalchemy.exc.IntegrityError) or "already exists" in text


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


def _seconds_between(earlier: Any, later: Any) -> float:
    """``later - earlier`` in seconds for two database timestamps (naive or aware, as each
    driver returns them; SQLite may hand back strings)."""
    from datetime import datetime

    def parse(value: Any) -> datetime:
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=None)

    return (parse(later) - parse(earlier)).total_seconds()


def _log_retry(what: str, trial_id: int, exc: BaseException) -> None:
    log.warning(f"{what} failed (%s); retrying", trial_id, _short_reason(exc.__cause__ or exc))


def _is_outage(exc: BaseException) -> bool:
    import sqlalchemy.exc

    return isinstance(exc, storage_errors() + (sqlalchemy.exc.DBAPIError,))


# Trial system attrs under these prefixes are batched like user attrs: optuna's artifact records
# (only the dashboard reads them) and TPE's relative-params record (read by other workers'
# constant liar, like the params, so flushed with them when the trial's setup ends). Others
# (grid ids, GA generations, pruner rungs) coordinate workers and are written through.
BATCHED_SYSTEM_PREFIXES = ("artifacts:", "tpe:relative_params:")


def _make_service_storage_class() -> type:  # noqa: C901 - one class, kept together
    from contextlib import contextmanager

    import optuna
    import sqlalchemy
    import sqlalchemy.dialects.mysql as mysql_dialect
    import sqlalchemy.dialects.postgresql as pg_dialect
    import sqlalchemy.dialects.sqlite as sqlite_dialect
    import sqlalchemy.exc
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    dialects = {"postgresql": pg_dialect, "sqlite": sqlite_dialect}

    def upsert(engine_name: str, model: Any, keys: list[str], values: dict[str, Any]) -> Any:
        """INSERT ... ON CONFLICT (keys) DO UPDATE SET values; None for other databases.

        Built on the table, not the ORM class: the ORM's bulk-insert path costs ~0.1 ms per
        statement in Python, five times the statement itself on SQLite."""
        table = model.__table__
        if engine_name in dialects:
            base = dialects[engine_name].insert(table)
            return base.on_conflict_do_update(index_elements=[table.c[k] for k in keys], set_={
                k: (base.excluded[k] if v is None else v) for k, v in values.items()})
        if engine_name in ("mysql", "mariadb"):
            base = mysql_dialect.insert(table)
            return base.on_duplicate_key_update({
                k: (base.inserted[k] if v is None else v) for k, v in values.items()})
        return None

    class ServiceRDBStorage(optuna.storages.RDBStorage):
        """RDBStorage with resilient heartbeats and batched trial user attrs (module doc)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # trial id -> {(model, key): value}: attrs not yet written
            self._pending: dict[int, dict[tuple[Any, str], Any]] = {}
            self._pending_lock = threading.Lock()
            self._last_outage_log = 0.0
            self._stmts: dict[str, Any] = {}
            # trial id -> when this process committed its first heartbeat with the trial
            self._born: dict[int, float] = {}
            # study id -> when this process last looked for stale trials
            self._stale_checked: dict[int, float] = {}
            # (trial id, trial as created) of the trial this process created last, until read
            self._fresh: tuple[int, Any] | None = None

        def __getstate__(self) -> dict[Any, Any]:
            state = super().__getstate__()
            for key in ("_pending_lock", "_stmts"):
                state.pop(key, None)
            return state

        def __setstate__(self, state: dict[Any, Any]) -> None:
            super().__setstate__(state)
            self._pending_lock = threading.Lock()
            self._stmts = {}

        def _stmt(self, name: str) -> Any:
            """The plain statements, built once per storage (compiling one costs ~1 ms); None
            for an upsert the database has no syntax for. ``update:a,b``: set the trial's
            columns a and b."""
            if name not in self._stmts:
                engine = self.engine.name
                trials = models.TrialModel.__table__
                if name.startswith("update:"):
                    columns = name.removeprefix("update:").split(",")
                    stmt = (trials.update()
                            .where(trials.c.trial_id == sqlalchemy.bindparam("tid"))
                            .values({k: sqlalchemy.bindparam(k) for k in columns}))
                elif name in ("state", "lock"):  # a trial's state; "lock": under a row lock
                    stmt = sqlalchemy.select(trials.c.state).where(
                        trials.c.trial_id == sqlalchemy.bindparam("trial_id"))
                    if name == "lock":
                        stmt = stmt.with_for_update()
                elif name == "heartbeat":
                    model = models.TrialHeartbeatModel
                    stmt = upsert(engine, model, ["trial_id"],
                                  {"heartbeat": sqlalchemy.func.current_timestamp()})
                elif name == "values":
                    stmt = upsert(engine, models.TrialValueModel, ["trial_id", "objective"],
                                  {"value": None, "value_type": None})
                elif name == "param":
                    stmt = upsert(engine, models.TrialParamModel, ["trial_id", "param_name"],
                                  {"param_value": None, "distribution_json": None})
                else:
                    model = (models.TrialUserAttributeModel if name == "user"
                             else models.TrialSystemAttributeModel)
                    stmt = upsert(engine, model, ["trial_id", "key"],
                                  {"value_json": None})
                self._stmts[name] = stmt
            return self._stmts[name]

        # -- the first heartbeat, in the transaction that starts the trial ------------------
        def _get_prepared_new_trial(self, study_id: int, template_trial: Any,
                                    session: Any) -> Any:
            """Optuna's trial insert; a trial created RUNNING gets its heartbeat row in the
            same transaction (queued trials are created WAITING and get theirs when taken)."""
            trial = super()._get_prepared_new_trial(study_id, template_trial, session)
            if trial.state == TrialState.RUNNING and self._beats_at_birth():
                session.execute(self._stmt("heartbeat"), {"trial_id": trial.trial_id})
                # Remembered before the commit: should it fail, the id is unused or reused by
                # another trial of this process, which is born with its own beat as well.
                self._born[trial.trial_id] = time.monotonic()
            return trial

        def _create_new_trial(self, study_id: int, template_trial: Any = None) -> Any:
            """Optuna's trial creation; a trial created RUNNING (``study.ask``) is kept as
            created, to answer the read that follows at once (``optuna.Trial`` loads the
            trial it was handed: 6 queries). Nothing else writes to a trial this process has
            just started (its heartbeat is written with it); any write of this process to it
            first, or any other read, goes to the database."""
            import copy

            frozen = super()._create_new_trial(study_id, template_trial)
            self._fresh = ((frozen._trial_id, copy.deepcopy(frozen))
                           if template_trial is None and frozen.state == TrialState.RUNNING
                           else None)
            return frozen

        def _beats_at_birth(self) -> bool:
            return self.heartbeat_interval is not None and self._stmt("heartbeat") is not None

        def _write_state(self, trial_id: int, state: Any, values: Any) -> bool:
            """Optuna's ``set_trial_state_values`` (same checks, same results) in plain
            statements: the trial row locked and checked, the values as one upsert (Optuna
            reads each objective's row, then inserts it: 2 statements per objective), the
            state, and for a queued trial taken to RUNNING its first heartbeat, all in one
            transaction."""
            from datetime import datetime

            session = self.scoped_session()
            try:
                current = session.execute(self._stmt("lock"),
                                          {"trial_id": trial_id}).scalar_one_or_none()
                if current is None:
                    raise KeyError(models.NOT_FOUND_MSG)
                self.check_trial_is_updatable(trial_id, TrialState(current))
                if state == TrialState.RUNNING and current != TrialState.WAITING:
                    session.rollback()
                    return False  # another worker took the queued trial first
                if values is not None:
                    rows = []
                    for objective, value in enumerate(values):
                        stored, kind = models.TrialValueModel.value_to_stored_repr(value)
                        rows.append({"trial_id": trial_id, "objective": objective,
                                     "value": stored, "value_type": kind})
                    session.execute(self._stmt("values"), rows[0] if len(rows) == 1 else rows)
                update: dict[str, Any] = {"state": state}
                if state == TrialState.RUNNING:
                    update["datetime_start"] = datetime.now()
                if state.is_finished():
                    update["datetime_complete"] = datetime.now()
                session.execute(self._stmt("update:" + ",".join(update)),
                                {"tid": trial_id, **update})
                if state == TrialState.RUNNING and self._beats_at_birth():
                    session.execute(self._stmt("heartbeat"), {"trial_id": trial_id})
                    self._born[trial_id] = time.monotonic()
                session.commit()
            except sqlalchemy.exc.IntegrityError:
                session.rollback()
                return False
            except sqlalchemy.exc.SQLAlchemyError as exc:
                session.rollback()
                raise optuna.exceptions.StorageInternalError(
                    "An exception is raised while storing a trial's state.") from exc
            except BaseException:
                session.rollback()
                raise
            finally:
                session.close()
            return True

        def expire_stale_check(self) -> None:
            """Make the next stale-trial check query the database (see below)."""
            self._stale_checked.clear()

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            """Optuna's rule (RUNNING, last heartbeat older than the grace period; trials
            without a heartbeat row are left alone) in one query, timed by the database.

            Optuna looks before every trial; here at most once per heartbeat interval per
            study and process (a trial turns stale only a grace period after its last beat, so
            looking more often finds it at most one interval sooner), and whenever the worker
            asks explicitly (:func:`fail_stale_trials`: at start and while it waits)."""
            if self.heartbeat_interval is None:
                return super()._get_stale_trial_ids(study_id)
            now = time.monotonic()
            if now - self._stale_checked.get(study_id, float("-inf")) < self.heartbeat_interval:
                return []
            self._stale_checked[study_id] = now
            grace = (self.grace_period if self.grace_period is not None
                     else 2 * self.heartbeat_interval)
            trials, beats = models.TrialModel.__table__, models.TrialHeartbeatModel.__table__
            query = (sqlalchemy.select(trials.c.trial_id, beats.c.heartbeat,
                                       sqlalchemy.func.now())
                     .join(beats, beats.c.trial_id == trials.c.trial_id)
                     .where(trials.c.study_id == study_id,
                            trials.c.state == TrialState.RUNNING))
            session = self.scoped_session()
            try:
                rows = session.execute(query).all()
                session.commit()
            finally:
                session.close()
            return [trial_id for trial_id, beat, now in rows
                    if _seconds_between(beat, now) > grace]

        # -- batched attrs ------------------------------------------------------------------
        def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
            if self.heartbeat_interval is None:  # nobody would flush: write through
                self._fresh = None
                super().set_trial_user_attr(trial_id, key, value)
                return
            with self._pending_lock:
                self._pending.setdefault(trial_id, {})[("user", key)] = value

        def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
            if self.heartbeat_interval is None or not key.startswith(BATCHED_SYSTEM_PREFIXES):
                self._fresh = None
                super().set_trial_system_attr(trial_id, key, value)
                return
            with self._pending_lock:
                self._pending.setdefault(trial_id, {})[("system", key)] = value

        def _set_trial_param(self, trial_id: int, param_name: str,
                             param_value_internal: float, distribution: Any,
                             previous_distribution: Any) -> None:
            """Optuna's checks now (trial updatable, distribution compatible with the study's
            earlier trials); the row itself is staged and written with the trial's other
            staged values (:func:`flush_trial`, the next heartbeat, or the final state): one
            commit for all params of a trial instead of one each."""
            if self.heartbeat_interval is None:  # nobody would flush: write through
                self._fresh = None
                super()._set_trial_param(trial_id, param_name, param_value_internal,
                                         distribution, previous_distribution)
                return
            from optuna import distributions

            with self._pending_lock:
                staged = self._pending.get(trial_id, {}).get(("param", param_name))
            if staged is not None:
                raise optuna.exceptions.StorageInternalError(
                    f"parameter {param_name!r} of trial id {trial_id} is already set")
            if previous_distribution is None:  # the first trial of this process: ask the study
                session = self.scoped_session()
                try:
                    trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
                    self.check_trial_is_updatable(trial_id, trial.state)
                    previous = (session.query(models.TrialParamModel.distribution_json)
                                .join(models.TrialModel)
                                .filter(models.TrialModel.study_id == trial.study_id,
                                        models.TrialParamModel.param_name == param_name)
                                .first())
                    session.commit()
                finally:
                    session.close()
                if previous is not None:
                    previous_distribution = distributions.json_to_distribution(previous[0])
            if previous_distribution is not None:
                distributions.check_distribution_compatibility(previous_distribution,
                                                               distribution)
            with self._pending_lock:
                self._pending.setdefault(trial_id, {})[("param", param_name)] = (
                    param_value_internal, distribution)

        def set_trial_intermediate_value(self, trial_id: int, step: int,
                                         intermediate_value: float) -> None:
            self._fresh = None
            super().set_trial_intermediate_value(trial_id, step, intermediate_value)

        def get_trial_param(self, trial_id: int, param_name: str) -> float:
            with self._pending_lock:
                staged = self._pending.get(trial_id, {}).get(("param", param_name))
            if staged is not None:
                return float(staged[0])
            return float(super().get_trial_param(trial_id, param_name))

        def flush(self, trial_id: int) -> None:
            """Write the trial's staged params and attrs in one transaction (see
            :func:`flush_trial`). Through a database outage they stay staged (and go with
            the next heartbeat or the final state) and training goes on."""
            try:
                with self._staged(trial_id) as session:
                    if session is not None:
                        session.commit()
            except optuna.exceptions.UpdateFinishedTrialError:
                raise
            except Exception as exc:
                if not _is_outage(exc):
                    raise
                log.warning("trial id %d: could not write its params and attrs now (%s); "
                            "they go with its next heartbeat", trial_id,
                            _short_reason(exc.__cause__ or exc))

        @contextmanager
        def _staged(self, trial_id: int, *, check: bool = True) -> Iterator[Any]:
            """Stage the trial's pending attrs in this thread's session, without committing.

            Optuna's own write that follows in the block uses the same thread-local session,
            so its commit carries the attrs too (one commit instead of two). On a failure the
            attrs go back to the pending buffer (newer values win) when the database was
            unreachable, and are dropped when the trial was already finished elsewhere.
            ``check=False`` leaves the "still updatable" check to the write that follows
            (Optuna's state write makes it, under a row lock, in the same transaction).
            """
            with self._pending_lock:
                attrs = self._pending.pop(trial_id, None)
            if not attrs:
                yield None
                return
            session = self.scoped_session()
            try:
                if check:
                    self._check_updatable(session, trial_id)
                self._upsert_attrs(session, trial_id, attrs)
                yield session
            except BaseException as exc:
                session.rollback()
                if _is_outage(exc):
                    with self._pending_lock:
                        self._pending[trial_id] = {**attrs, **self._pending.get(trial_id, {})}
                raise
            finally:
                session.close()

        def _check_updatable(self, session: Any, trial_id: int) -> None:
            """Optuna's "trial exists and is not finished" check, as one plain query (the
            ORM's load of the whole trial row costs ~0.3 ms more per write)."""
            state = session.execute(self._stmt("state"),
                                    {"trial_id": trial_id}).scalar_one_or_none()
            if state is None:
                raise KeyError(models.NOT_FOUND_MSG)
            self.check_trial_is_updatable(trial_id, TrialState(state))

        def _upsert_attrs(self, session: Any, trial_id: int,
                          attrs: dict[tuple[str, str], Any]) -> None:
            import json

            from optuna.distributions import distribution_to_json

            staged = {k: v for (which, k), v in attrs.items() if which == "param"}
            params = [{"trial_id": trial_id, "param_name": k, "param_value": value,
                       "distribution_json": distribution_to_json(dist)}
                      for k, (value, dist) in staged.items()]
            if params:
                stmt = self._stmt("param")
                if stmt is not None:
                    session.execute(stmt, params[0] if len(params) == 1 else params)
                else:
                    for k, (value, dist) in staged.items():
                        self._set_trial_param_without_commit(session, trial_id, k, value,
                                                             dist, dist)
            for kind in ("user", "system"):
                rows = [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                        for (which, k), v in attrs.items() if which == kind]
                if not rows:
                    continue
                # One statement object, built once, with a parameter list (executemany): a
                # multi-row VALUES would be compiled anew for every trial.
                stmt = self._stmt(kind)
                if stmt is not None:
                    session.execute(stmt, rows[0] if len(rows) == 1 else rows)
                    continue
                model = (models.TrialUserAttributeModel if kind == "user"
                         else models.TrialSystemAttributeModel)
                for row in rows:
                    self._set_trial_attr_without_commit(session, model, trial_id, row["key"],
                                                        json.loads(row["value_json"]))

        def set_trial_state_values(self, trial_id: int, state: Any,
                                   values: Any = None) -> bool:
            """Optuna's write, retried through a short outage: losing the result of a trial
            that finished training is the one loss a database restart must not cause."""
            self._fresh = None
            deadline = time.monotonic() + STATE_WRITE_RETRY_S
            attempt = 0
            while True:
                attempt += 1
                try:
                    with self._staged(trial_id, check=False):
                        if self._stmt("values") is None:  # no upsert here: Optuna's write
                            return super().set_trial_state_values(trial_id, state=state,
                                                                  values=values)
                        return self._write_state(trial_id, state, values)
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
            fresh, self._fresh = self._fresh, None
            if fresh is not None and fresh[0] == trial_id:
                return self._with_pending(fresh[1])
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
            for (kind, key), value in pending.items():
                if kind == "param":
                    internal, dist = value
                    trial._params[key] = dist.to_external_repr(internal)
                    trial._distributions[key] = dist
                else:
                    (trial.user_attrs if kind == "user" else trial.system_attrs)[key] = value
            return trial

        # -- heartbeats that survive a database restart -------------------------------------
        def record_heartbeat(self, trial_id: int) -> None:
            born = self._born.pop(trial_id, None)
            if born is not None and time.monotonic() - born < self.heartbeat_interval:
                return  # the heartbeat thread's first beat: written with the trial already
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
