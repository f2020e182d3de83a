"""What ``hpo.storage.service.ServiceRDBStorage`` adds to Optuna's ``RDBStorage``, each against
plain Optuna: heartbeats that survive a database restart, a final state write retried through a
short outage (connection errors only), worker trials born with a heartbeat, pickling.

Optuna's own storage tests check that nothing else changed (``test_optuna_storage_suite.py``).
Every test here runs on SQLite and on a fresh PostgreSQL database; "another process" is a plain
``optuna.storages.RDBStorage`` on the same URL. A database outage is simulated by refusing new
connections (as a stopped server does) after dropping the pooled ones.
"""

from __future__ import annotations

import pickle
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from hpo.storage import open_storage, worker_trials
from hpo.storage import service as service_storage
from hpo.storage.errors import is_connection_error


@contextmanager
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ask() outside optimize() with heartbeats
        yield


def heartbeat_rows(url: str) -> dict[int, object]:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text(
                "SELECT trial_id, heartbeat FROM trial_heartbeats")).all()
    finally:
        engine.dispose()
    return dict(rows)


def age_heartbeat(url: str, trial_id: int, seconds: float) -> None:
    """Move a trial's heartbeat ``seconds`` into the past, as a dead worker leaves it."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as conn:
            now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
            if isinstance(now, str):  # SQLite
                from datetime import datetime

                now = datetime.fromisoformat(now)
            conn.execute(sqlalchemy.text(
                "UPDATE trial_heartbeats SET heartbeat = :hb WHERE trial_id = :tid"),
                {"hb": now.replace(tzinfo=None) - timedelta(seconds=seconds), "tid": trial_id})
    finally:
        engine.dispose()



def close(*storages: optuna.storages.RDBStorage) -> None:
    for storage in storages:
        storage.remove_session()
        storage.engine.dispose()


@contextmanager
def outage(storage: optuna.storages.RDBStorage, *, refusals: int | None = None,
           during: Callable[[], None] | None = None) -> Iterator[list[int]]:
    """New connections of ``storage`` are refused, as by a stopped server: every one, or the
    next ``refusals``. ``during`` runs at the first refusal (what another worker does while
    this one is cut off). Yields the count of refused connections."""
    engine = storage.engine
    storage.remove_session()
    engine.dispose()  # a restart drops the pooled connections
    dbapi = engine.dialect.loaded_dbapi
    refused = [0]

    def refuse(*_args: object) -> None:
        if refusals is None or refused[0] < refusals:
            refused[0] += 1
            if refused[0] == 1 and during is not None:
                during()
            raise dbapi.OperationalError("the database system is shutting down (simulated)")

    sqlalchemy.event.listen(engine, "do_connect", refuse)
    try:
        yield refused
    finally:
        sqlalchemy.event.remove(engine, "do_connect", refuse)


# -- worker trials are born with a heartbeat; others behave as in Optuna ----------------------
def test_a_worker_trial_is_born_with_its_heartbeat(storage_url: str) -> None:
    """Inside ``worker_trials`` a trial created RUNNING has its heartbeat row as soon as it
    exists (no beat was sent), and a queued trial gets one when the worker takes it. Outside,
    ``ask`` gives no heartbeat, as in Optuna."""
    storage = open_storage(storage_url, heartbeat_interval=30, grace_period=60)
    study = optuna.create_study(study_name="born", storage=storage)
    try:
        with quiet():
            study.ask()
        assert heartbeat_rows(storage_url) == {}
        with worker_trials(study):
            created = storage.create_new_trial(study._study_id)
            assert set(heartbeat_rows(storage_url)) == {created}
            study.enqueue_trial({"x": 1.0})  # WAITING: no beat
            assert set(heartbeat_rows(storage_url)) == {created}
            with quiet():
                queued = study.ask()
        assert queued.number == 2  # the enqueued trial, not a new one
        assert set(heartbeat_rows(storage_url)) == {created, queued._trial_id}
        with quiet():
            study.ask()  # after the block: Optuna's behaviour again
        assert set(heartbeat_rows(storage_url)) == {created, queued._trial_id}
    finally:
        close(storage)


def test_a_worker_killed_before_its_first_beat_leaves_no_zombie(storage_url: str) -> None:
    """Optuna's stale check skips RUNNING trials without a heartbeat row, so a worker killed
    between creating a trial and its heartbeat thread's first beat leaves a trial RUNNING for
    ever. A worker trial has its row from the start, and is reclaimed once it is stale."""
    plain = optuna.storages.RDBStorage(storage_url, heartbeat_interval=1, grace_period=2)
    service = open_storage(storage_url, heartbeat_interval=1, grace_period=2)
    try:
        with quiet():
            lost_plain = optuna.create_study(study_name="plain", storage=plain).ask()
            study = optuna.create_study(study_name="service", storage=service)
            with worker_trials(study):
                lost_service = study.ask()
        # both workers die here: no heartbeat thread ever runs
        assert set(heartbeat_rows(storage_url)) == {lost_service._trial_id}
        age_heartbeat(storage_url, lost_service._trial_id, 3600)
        for study_name, storage in (("plain", plain), ("service", service)):
            optuna.storages.fail_stale_trials(
                optuna.load_study(study_name=study_name, storage=storage))
        assert plain.get_trial(lost_plain._trial_id).state == TrialState.RUNNING  # a zombie
        assert plain.get_trial(lost_service._trial_id).state == TrialState.FAIL  # reclaimed
        retries = [t for t in optuna.load_study(study_name="service", storage=plain).trials
                   if t.state == TrialState.WAITING]
        assert len(retries) == 1 and retries[0].system_attrs["failed_trial"] == 0
    finally:
        close(plain, service)


def test_ask_and_copied_trials_are_never_stale(storage_url: str) -> None:
    """A trial from ``study.ask()`` (a notebook on the same database) and a RUNNING trial
    copied with ``copy_study`` have no heartbeat, so Optuna never fails them as stale; nor
    does the service. A worker trial whose beat is old is failed (the contrast)."""
    storage = open_storage(storage_url, heartbeat_interval=1, grace_period=2)
    source = optuna.create_study(study_name="source", storage=optuna.storages.InMemoryStorage())
    source.ask()  # RUNNING in the source study
    try:
        study = optuna.create_study(study_name="notebook", storage=storage)
        with quiet():
            asked = study.ask()
            with worker_trials(study):
                worker = study.ask()
        optuna.copy_study(from_study_name="source", from_storage=source._storage,
                          to_storage=storage, to_study_name="copied")
        copied = optuna.load_study(study_name="copied", storage=storage)
        assert [t.state for t in copied.trials] == [TrialState.RUNNING]
        assert set(heartbeat_rows(storage_url)) == {worker._trial_id}
        age_heartbeat(storage_url, worker._trial_id, 3600)
        optuna.storages.fail_stale_trials(study)
        optuna.storages.fail_stale_trials(copied)
        assert storage.get_trial(asked._trial_id).state == TrialState.RUNNING
        assert storage.get_trial(worker._trial_id).state == TrialState.FAIL
        assert [t.state for t in copied.trials] == [TrialState.RUNNING]
    finally:
        close(storage)


def test_a_queued_trial_is_taken_by_one_worker_only(storage_url: str) -> None:
    """Two workers take the same WAITING trial: the first gets it (and its heartbeat), the
    second is told no, as Optuna's own transition answers."""
    first = open_storage(storage_url, heartbeat_interval=30, grace_period=60)
    second = open_storage(storage_url, heartbeat_interval=30, grace_period=60)
    try:
        study = optuna.create_study(study_name="queue", storage=first)
        study.enqueue_trial({"x": 1.0})
        trial_id = study.trials[0]._trial_id
        with first.worker_trials():
            assert first.set_trial_state_values(trial_id, TrialState.RUNNING) is True
        assert trial_id in heartbeat_rows(storage_url)
        beat = heartbeat_rows(storage_url)[trial_id]
        with second.worker_trials():
            assert second.set_trial_state_values(trial_id, TrialState.RUNNING) is False
        assert heartbeat_rows(storage_url) == {trial_id: beat}
        assert second.get_trial(trial_id).state == TrialState.RUNNING
    finally:
        close(first, second)


# -- heartbeats through a database restart -----------------------------------------------------
def test_heartbeats_survive_a_database_restart(storage_url: str) -> None:
    """Optuna's beat raises when the database is down, which ends its heartbeat thread (and the
    trial is failed as stale while it still trains); the service's beat is skipped and the
    thread beats again once the database is back."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    plain = optuna.storages.RDBStorage(storage_url, heartbeat_interval=1, grace_period=3)
    service = open_storage(storage_url, heartbeat_interval=1, grace_period=3)
    try:
        study = optuna.create_study(study_name="restart", storage=service)
        with quiet(), worker_trials(study):
            trial = study.ask()
        trial_id = trial._trial_id
        with outage(plain), pytest.raises(optuna.exceptions.StorageInternalError):
            plain.record_heartbeat(trial_id)
        with get_heartbeat_thread(trial_id, service):
            with outage(service) as refused:
                time.sleep(2.5)  # two or three beats refused
                age_heartbeat(storage_url, trial_id, 3600)  # as if the outage were long
            assert refused[0] >= 2
            deadline = time.monotonic() + 10
            while service._get_stale_trial_ids(study._study_id) and \
                    time.monotonic() < deadline:
                time.sleep(0.2)
            # the thread that lived through the outage beats again
            assert service._get_stale_trial_ids(study._study_id) == []
    finally:
        close(plain, service)


# -- the final state write, retried through connection errors only -----------------------------
def test_the_final_state_survives_an_outage(storage_url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_storage, "STATE_WRITE_PAUSE_S", 0.05)
    plain = optuna.storages.RDBStorage(storage_url)
    service = open_storage(storage_url, heartbeat_interval=30, grace_period=60)
    try:
        study = optuna.create_study(study_name="final", storage=service)
        with quiet():
            lost, kept = study.ask(), study.ask()
        with outage(plain, refusals=3), pytest.raises(optuna.exceptions.StorageInternalError):
            plain.set_trial_state_values(lost._trial_id, TrialState.COMPLETE, [0.5])
        with outage(service, refusals=3) as refused:
            assert service.set_trial_state_values(kept._trial_id, TrialState.COMPLETE,
                                                  [0.5]) is True
        assert refused[0] == 3
        stored = plain.get_trial(kept._trial_id)
        assert (stored.state, stored.values) == (TrialState.COMPLETE, [0.5])
        assert plain.get_trial(lost._trial_id).state == TrialState.RUNNING
    finally:
        close(plain, service)


@pytest.mark.parametrize("peer_state", [TrialState.COMPLETE, TrialState.FAIL])
def test_a_trial_finished_elsewhere_meanwhile_is_success_only_if_it_holds_this_write(
        storage_url: str, monkeypatch: pytest.MonkeyPatch, peer_state: TrialState) -> None:
    """When the write's first attempt went through and only its answer was lost, the retry
    finds the trial finished with this write's state and values: True. If another worker
    failed the trial during the outage instead, Optuna's UpdateFinishedTrialError is raised,
    never True."""
    monkeypatch.setattr(service_storage, "STATE_WRITE_PAUSE_S", 0.05)
    peer = optuna.storages.RDBStorage(storage_url)
    service = open_storage(storage_url, heartbeat_interval=30, grace_period=60)
    try:
        study = optuna.create_study(study_name="peer", storage=service)
        with quiet():
            trial_id = study.ask()._trial_id
        values = [0.5] if peer_state == TrialState.COMPLETE else None

        def peer_writes() -> None:
            peer.set_trial_state_values(trial_id, peer_state, values)

        with outage(service, refusals=1, during=peer_writes):
            if peer_state == TrialState.COMPLETE:
                assert service.set_trial_state_values(trial_id, TrialState.COMPLETE,
                                                      [0.5]) is True
            else:
                with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
                    service.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5])
        assert peer.get_trial(trial_id).state == peer_state
    finally:
        close(peer, service)


def test_a_statement_error_is_not_retried(storage_url: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An error on a live connection (SQLite's "database is locked" after its timeout, a
    constraint, a value too long) is raised at once, as Optuna raises it: one attempt."""
    monkeypatch.setattr(service_storage, "STATE_WRITE_PAUSE_S", 0.05)
    service = open_storage(storage_url, heartbeat_interval=30, grace_period=60)
    attempts = [0]
    dbapi = service.engine.dialect.loaded_dbapi

    def locked(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE TRIALS"):
            attempts[0] += 1
            raise dbapi.OperationalError("database is locked (simulated)")

    try:
        study = optuna.create_study(study_name="locked", storage=service)
        with quiet():
            trial_id = study.ask()._trial_id
        sqlalchemy.event.listen(service.engine, "before_cursor_execute", locked)
        try:
            with pytest.raises(optuna.exceptions.StorageInternalError) as raised:
                service.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5])
        finally:
            sqlalchemy.event.remove(service.engine, "before_cursor_execute", locked)
        assert attempts[0] == 1
        assert not is_connection_error(raised.value)
        assert service.get_trial(trial_id).state == TrialState.RUNNING
    finally:
        close(service)


def test_connection_errors_are_told_from_bad_writes(pg_url: str) -> None:
    """Real errors: a refused connection is one; a value too long for its column (an attr key
    over 512 characters on PostgreSQL) and a duplicate key are not."""
    engine = sqlalchemy.create_engine("postgresql+psycopg2://postgres@127.0.0.1:9/none")
    with pytest.raises(sqlalchemy.exc.OperationalError) as down:
        engine.connect()
    engine.dispose()
    assert is_connection_error(down.value)
    storage = open_storage(pg_url, heartbeat_interval=30, grace_period=60)
    try:
        study = optuna.create_study(study_name="poison", storage=storage)
        with quiet():
            trial = study.ask()
        with pytest.raises(optuna.exceptions.StorageInternalError) as too_long:
            trial.set_user_attr("k" * 600, 1)
        assert isinstance(too_long.value.__cause__, sqlalchemy.exc.DataError)
        assert not is_connection_error(too_long.value)
        with storage.engine.connect() as conn, pytest.raises(
                sqlalchemy.exc.IntegrityError) as duplicate:
            conn.execute(sqlalchemy.text(
                "INSERT INTO studies (study_id, study_name) VALUES (:i, 'dup')"),
                {"i": study._study_id})
        assert not is_connection_error(duplicate.value)
        assert storage.get_trial(trial._trial_id).state == TrialState.RUNNING
    finally:
        close(storage)


# -- Optuna's checks are Optuna's again --------------------------------------------------------
def test_a_value_that_is_not_json_fails_the_trial_at_once(storage_url: str) -> None:
    """``np.float32`` is not JSON: Optuna raises TypeError from ``set_user_attr`` and the trial
    fails with its params kept, as on plain Optuna."""
    import numpy as np

    storage = open_storage(storage_url, heartbeat_interval=30, grace_period=60)
    try:
        study = optuna.create_study(study_name="json", storage=storage)

        def objective(trial: optuna.Trial) -> float:
            x = trial.suggest_float("x", 0.0, 1.0)
            trial.set_user_attr("loss", np.float32(x))
            return x

        with worker_trials(study), pytest.raises(TypeError, match="JSON serializable"):
            study.optimize(objective, n_trials=1)
        (trial,) = study.trials
        assert trial.state == TrialState.FAIL and set(trial.params) == {"x"}
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
            storage.set_trial_user_attr(trial._trial_id, "late", 1)
        with pytest.raises(KeyError):
            storage.set_trial_user_attr(trial._trial_id + 100, "missing", 1)
    finally:
        close(storage)


# -- pickling ------------------------------------------------------------------------------------
def objective_for_pool(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0) ** 2


def optimize_in_pool(study: optuna.Study) -> int:
    study.optimize(objective_for_pool, n_trials=2)
    return len(study.trials)


def test_a_pickled_study_round_trips(storage_url: str) -> None:
    storage = open_storage(storage_url, heartbeat_interval=30, grace_period=60)
    try:
        study = optuna.create_study(study_name="pickled", storage=storage)
        study.optimize(objective_for_pool, n_trials=2)
        copy = pickle.loads(pickle.dumps(study))
        backend = copy._storage._backend
        assert type(backend) is service_storage.ServiceRDBStorage
        assert (backend.url, backend.heartbeat_interval, backend.grace_period) == (
            storage.url, 30, 60)
        assert [t.params for t in copy.trials] == [t.params for t in study.trials]
        copy.optimize(objective_for_pool, n_trials=1)
        assert len(study.trials) == 3
        close(backend)
    finally:
        close(storage)


def test_a_spawn_pool_of_two_processes_runs_trials_on_one_study(storage_url: str) -> None:
    """Spawn (the default start method from Python 3.14) pickles the study into each worker."""
    import multiprocessing

    storage = open_storage(storage_url, heartbeat_interval=30, grace_period=60)
    try:
        study = optuna.create_study(study_name="spawned", storage=storage)
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            pool.map(optimize_in_pool, [study, study])
        trials = study.trials
        assert len(trials) == 4
        assert all(t.state == TrialState.COMPLETE for t in trials)
    finally:
        close(storage)


_OPEN_AT = r"""
import sys, time
url, start = sys.argv[1], float(sys.argv[2])
import optuna
from hpo.storage import open_storage
while time.time() < start:
    pass
storage = open_storage(url, heartbeat_interval=30, grace_period=60)
optuna.create_study(study_name="race", storage=storage, load_if_exists=True)
"""


def test_a_fresh_database_opened_by_many_workers_at_once(storage_url: str) -> None:
    """Workers on several hosts started together against an empty database all create its
    schema at the same moment. Plain Optuna lets most of them crash on "already exists" /
    duplicate-key errors (measured: 2-5 of 6 processes on SQLite, 5 of 6 on PostgreSQL);
    every one starts here."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    start = time.time() + 5  # all six have imported optuna by then, even on a busy machine
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT, storage_url, str(start)],
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(6)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, "\n".join(e[-1500:] for e in errors if e)
    studies = optuna.get_all_study_summaries(storage_url)
    assert [s.study_name for s in studies] == ["race"]


def test_storage_benchmark_runs_and_writes_the_documented_json(tmp_path: Path) -> None:
    """``scripts/bench_storage.py`` on a tiny run: every row, on every reachable backend."""
    import json

    from scripts.bench_storage import main as bench_main
    from tests.conftest import postgres_available

    out = tmp_path / "storage.json"
    assert bench_main(["--trials", "3", "--repeats", "1", "--skip-workers", "--demo-trials", "0",
                       "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    backends = ["sqlite"] + ([] if postgres_available() else ["postgres"])
    assert sorted(data) == sorted(backends)
    for backend in backends:
        row = data[backend]
        assert set(row) == {"bare_ms", "bare_heartbeat_ms", "service_storage_ms",
                            "service_ms", "service_without_artifacts_ms",
                            "service_ratio_median", "service_vs_heartbeat_median"}
        assert all(v > 0 for v in row.values())


_COMMIT_AND_DIE = r"""
import os, sys
import optuna
from hpo.storage import open_storage
storage = open_storage(sys.argv[1], heartbeat_interval=30, grace_period=60)
study = optuna.create_study(study_name="wal", storage=storage, load_if_exists=True)
study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
os._exit(0)  # like kill -9: no connection closed, no checkpoint of the log into the file
"""


def test_sqlite_files_use_a_write_ahead_log_and_keep_what_a_dead_process_committed(
        tmp_path: Path) -> None:
    import sqlite3
    import subprocess
    import sys

    path = tmp_path / "hpo.db"
    url = f"sqlite:///{path}"
    optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}").engine.dispose()
    proc = subprocess.run([sys.executable, "-c", _COMMIT_AND_DIE, url],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert path.with_name("hpo.db-wal").exists()  # the log was not folded into the file
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with sqlite3.connect(tmp_path / "optuna.db") as conn:  # plain Optuna: SQLite's default
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    storage = open_storage(url, heartbeat_interval=30, grace_period=60)
    try:
        with storage.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        trials = optuna.load_study(study_name="wal", storage=storage).trials
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    finally:
        storage.remove_session()
        storage.engine.dispose()
