"""The storage adjustments of ``hpo.storage.ServiceRDBStorage``, each against plain Optuna.

Every test runs on SQLite and on a fresh PostgreSQL database; "another process" is a plain
``optuna.storages.RDBStorage`` on the same URL.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from hpo.storage import open_storage


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


class StatementCounter:
    def __init__(self, engine: sqlalchemy.engine.Engine) -> None:
        self.engine, self.count = engine, 0
        sqlalchemy.event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: object, **_kwargs: object) -> None:
        self.count += 1

    def close(self) -> None:
        sqlalchemy.event.remove(self.engine, "before_cursor_execute", self._seen)


def test_a_trial_is_born_with_its_heartbeat(storage_url: str) -> None:
    """Created RUNNING or taken from the queue: the heartbeat row is committed with the state,
    and the heartbeat thread's first beat (which would repeat it) sends no statement."""
    storage = open_storage(storage_url, heartbeat_interval=30, grace_period=60)
    study = optuna.create_study(study_name="born", storage=storage)
    counter = StatementCounter(storage.engine)
    try:
        with quiet():
            fresh = study.ask()
        assert set(heartbeat_rows(storage_url)) == {fresh._trial_id}
        study.enqueue_trial({"x": 1.0})
        assert set(heartbeat_rows(storage_url)) == {fresh._trial_id}  # WAITING: no beat
        with quiet():
            queued = study.ask()
        assert queued.params == {} and queued._trial_id != fresh._trial_id
        assert set(heartbeat_rows(storage_url)) == {fresh._trial_id, queued._trial_id}

        before = counter.count
        storage.record_heartbeat(queued._trial_id)  # the thread's first beat: skipped
        assert counter.count == before
        storage.record_heartbeat(queued._trial_id)  # the periodic beats write
        assert counter.count > before
    finally:
        counter.close()
        storage.remove_session()
        storage.engine.dispose()


def test_a_worker_killed_before_its_first_beat_leaves_no_zombie(storage_url: str) -> None:
    """Optuna's stale check skips RUNNING trials without a heartbeat row, so a worker killed
    between creating a trial and the heartbeat thread's first beat left a trial RUNNING for
    ever. Here the row exists from the start, and the trial is reclaimed once it is stale."""
    plain = optuna.storages.RDBStorage(storage_url, heartbeat_interval=1, grace_period=2)
    service = open_storage(storage_url, heartbeat_interval=1, grace_period=2)
    try:
        with quiet():
            lost_plain = optuna.create_study(study_name="plain", storage=plain).ask()
            lost_service = optuna.create_study(study_name="service", storage=service).ask()
        # both workers die here: no heartbeat thread ever runs
        for study_name, storage, trial in (("plain", plain, lost_plain),
                                           ("service", service, lost_service)):
            if trial._trial_id in heartbeat_rows(storage_url):
                age_heartbeat(storage_url, trial._trial_id, 3600)
            study = optuna.load_study(study_name=study_name, storage=storage)
            optuna.storages.fail_stale_trials(study)
        states = {t._trial_id: t.state for t in (plain.get_trial(lost_plain._trial_id),
                                                plain.get_trial(lost_service._trial_id))}
        assert states[lost_plain._trial_id] == TrialState.RUNNING  # Optuna: a zombie
        assert states[lost_service._trial_id] == TrialState.FAIL   # reclaimed
        retries = [t for t in optuna.load_study(study_name="service", storage=plain).trials
                   if t.state == TrialState.WAITING]
        assert len(retries) == 1 and retries[0].system_attrs["failed_trial"] == 0
    finally:
        for storage in (plain, service):
            storage.remove_session()
            storage.engine.dispose()


def test_stale_check_agrees_with_optuna(storage_url: str) -> None:
    """One query instead of three round trips, the same answer: stale beat -> stale; fresh
    beat, no beat row, or finished -> not stale."""
    service = open_storage(storage_url, heartbeat_interval=1, grace_period=30)
    study = optuna.create_study(study_name="stale", storage=service)
    try:
        with quiet():
            trials = [study.ask() for _ in range(5)]
        old, fresh, just_over, no_row, finished = (t._trial_id for t in trials)
        age_heartbeat(storage_url, old, 3600)
        age_heartbeat(storage_url, just_over, 45)
        age_heartbeat(storage_url, finished, 3600)
        study.tell(trials[4], 1.0)
        engine = sqlalchemy.create_engine(storage_url)
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("DELETE FROM trial_heartbeats WHERE trial_id = :t"),
                         {"t": no_row})
        engine.dispose()
        plain = optuna.storages.RDBStorage(storage_url, heartbeat_interval=1, grace_period=30)
        expected = plain._get_stale_trial_ids(study._study_id)
        plain.engine.dispose()
        assert sorted(service._get_stale_trial_ids(study._study_id)) == sorted(expected) == \
            sorted([old, just_over])
        assert fresh not in expected
    finally:
        service.remove_session()
        service.engine.dispose()


def test_artifact_records_travel_with_the_final_state(storage_url: str,
                                                      tmp_path: Path) -> None:
    """The dashboard's artifact records are batched like user attrs; a sampler's system attrs
    (shared between workers) are written at once."""
    from hpo.artifacts import artifact_store

    storage = open_storage(storage_url, heartbeat_interval=30, grace_period=60)
    study = optuna.create_study(study_name="artifacts", storage=storage)
    other = optuna.storages.RDBStorage(storage_url)
    try:
        with quiet():
            trial = study.ask()
        path = tmp_path / "metrics.json"
        path.write_text('{"loss": 0.5}\n')
        artifact_id = optuna.artifacts.upload_artifact(
            artifact_store=artifact_store(tmp_path / "out"), file_path=str(path),
            study_or_trial=trial)
        storage.set_trial_system_attr(trial._trial_id, "grid_id", 7)
        seen = other.get_trial(trial._trial_id).system_attrs
        assert seen == {"grid_id": 7}  # the artifact record is pending ...
        mine = study._storage.get_trial(trial._trial_id).system_attrs
        assert f"artifacts:{artifact_id}" in mine  # ... but this process reads it
        study.tell(trial, 0.5)
        assert f"artifacts:{artifact_id}" in other.get_trial(trial._trial_id).system_attrs
        listed = optuna.artifacts.get_all_artifact_meta(
            optuna.load_study(study_name="artifacts", storage=other).trials[0], storage=other)
        assert [a.artifact_id for a in listed] == [artifact_id]
    finally:
        other.engine.dispose()
        storage.remove_session()
        storage.engine.dispose()


@pytest.mark.parametrize("interval", [None, 30])
def test_without_heartbeats_attrs_are_written_through(storage_url: str,
                                                     interval: int | None) -> None:
    storage = open_storage(storage_url, heartbeat_interval=interval,
                           grace_period=60 if interval else None)
    study = optuna.create_study(study_name="through", storage=storage)
    other = optuna.storages.RDBStorage(storage_url)
    try:
        with quiet():
            trial = study.ask()
        trial.set_user_attr("worker", "a:1")
        expected = {} if interval else {"worker": "a:1"}
        assert other.get_trial(trial._trial_id).user_attrs == expected
        assert (trial._trial_id in heartbeat_rows(storage_url)) == bool(interval)
    finally:
        other.engine.dispose()
        storage.remove_session()
        storage.engine.dispose()


def test_stale_trials_are_looked_for_once_per_interval_unless_asked(storage_url: str) -> None:
    """Optuna's check before every trial queries at most once per heartbeat interval; the
    worker's own check (at start, while waiting) always queries."""
    from hpo.storage import fail_stale_trials

    service = open_storage(storage_url, heartbeat_interval=30, grace_period=60)
    study = optuna.create_study(study_name="limit", storage=service)
    counter = StatementCounter(service.engine)
    try:
        with quiet():
            zombie = study.ask()
        optuna.storages.fail_stale_trials(study)  # the first look queries
        age_heartbeat(storage_url, zombie._trial_id, 3600)
        before = counter.count
        optuna.storages.fail_stale_trials(study)  # within the interval: no query
        assert counter.count == before
        assert service.get_trial(zombie._trial_id).state == TrialState.RUNNING
        fail_stale_trials(study)  # asked explicitly: found and failed now
        assert service.get_trial(zombie._trial_id).state == TrialState.FAIL
    finally:
        counter.close()
        service.remove_session()
        service.engine.dispose()


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
    assert bench_main(["--trials", "3", "--repeats", "1", "--skip-workers",
                       "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    backends = ["sqlite"] + ([] if postgres_available() else ["postgres"])
    assert sorted(data) == sorted(backends)
    for backend in backends:
        row = data[backend]
        assert set(row) == {"bare_ms", "bare_heartbeat_ms", "service_storage_ms",
                            "service_ms", "service_without_artifacts_ms",
                            "service_ratio_median"}
        assert all(v > 0 for v in row.values())


def test_a_queued_trial_is_started_by_one_worker_only(storage_url: str) -> None:
    """Two workers take the same WAITING trial: the first gets it (with its heartbeat), the
    second is told no, as Optuna's own transition answers."""
    first = open_storage(storage_url, heartbeat_interval=30, grace_period=60)
    second = open_storage(storage_url, heartbeat_interval=30, grace_period=60)
    try:
        study = optuna.create_study(study_name="queue", storage=first)
        study.enqueue_trial({"x": 1.0})
        trial_id = study.trials[0]._trial_id
        assert trial_id not in heartbeat_rows(storage_url)
        assert first.set_trial_state_values(trial_id, TrialState.RUNNING) is True
        assert second.set_trial_state_values(trial_id, TrialState.RUNNING) is False
        assert second.get_trial(trial_id).state == TrialState.RUNNING
        assert trial_id in heartbeat_rows(storage_url)
        assert trial_id in first._born and trial_id not in second._born
    finally:
        for storage in (first, second):
            storage.remove_session()
            storage.engine.dispose()


class CommitCounter:
    """Commits of this engine's connections (read-only transactions included)."""

    def __init__(self, engine: sqlalchemy.engine.Engine) -> None:
        self.engine, self.count = engine, 0
        sqlalchemy.event.listen(engine, "commit", self._seen)

    def _seen(self, *_args: object) -> None:
        self.count += 1

    def close(self) -> None:
        sqlalchemy.event.remove(self.engine, "commit", self._seen)


SPACE = {"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True),
         "width": optuna.distributions.IntDistribution(1, 4),
         "optimizer": optuna.distributions.CategoricalDistribution(["sgd", "momentum"])}


def suggest_all(trial: optuna.Trial) -> dict[str, object]:
    return {"lr": trial.suggest_float("lr", 1e-3, 1.0, log=True),
            "width": trial.suggest_int("width", 1, 4),
            "optimizer": trial.suggest_categorical("optimizer", ["sgd", "momentum"])}


@pytest.mark.parametrize("kind", ["optuna", "service"])
def test_a_trials_params_are_written_in_one_commit_when_it_is_set_up(storage_url: str,
                                                                    kind: str) -> None:
    """Optuna commits each param as it is suggested; the service stages them (this process
    reads them at once) and writes them together when the worker has set the trial up."""
    from hpo.storage import flush_trial

    storage = (open_storage(storage_url, heartbeat_interval=30, grace_period=60)
               if kind == "service" else optuna.storages.RDBStorage(storage_url))
    other = optuna.storages.RDBStorage(storage_url)
    study = optuna.create_study(study_name="params", storage=storage,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    try:
        with quiet():
            study.optimize(suggest_all_objective, n_trials=1)  # distributions now cached
            trial = study.ask()
        commits = CommitCounter(storage.engine)
        params = suggest_all(trial)
        staged = commits.count
        flush_trial(trial)
        flushed = commits.count - staged
        commits.close()
        assert study._storage.get_trial(trial._trial_id).params == params
        assert other.get_trial(trial._trial_id).params == params
        assert other.get_trial(trial._trial_id).distributions == SPACE
        if kind == "optuna":
            assert (staged, flushed) == (3, 0)
        else:
            assert (staged, flushed) == (0, 1)
    finally:
        other.engine.dispose()
        storage.remove_session()
        storage.engine.dispose()


def suggest_all_objective(trial: optuna.Trial) -> float:
    suggest_all(trial)
    return 0.0


def test_staged_params_are_checked_as_optuna_checks_them(storage_url: str) -> None:
    """A distribution that contradicts the study's earlier trials is refused when suggested
    (by a process that has not seen the param yet: it asks the database), and staged params
    of a trial finished elsewhere in the meantime are refused when written, not lost quietly."""
    from hpo.storage import flush_trial

    first = open_storage(storage_url, heartbeat_interval=30, grace_period=60)
    study = optuna.create_study(study_name="checks", storage=first)
    fresh = open_storage(storage_url, heartbeat_interval=30, grace_period=60)
    try:
        with quiet():
            study.optimize(suggest_all_objective, n_trials=1)
            trial = optuna.load_study(study_name="checks", storage=fresh).ask()
            with pytest.raises(ValueError, match="Cannot set different distribution kind"):
                trial.suggest_int("lr", 1, 4)
            trial.suggest_float("lr", 1e-3, 1.0, log=True)
        optuna.storages.RDBStorage(storage_url).set_trial_state_values(
            trial._trial_id, TrialState.FAIL)
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
            flush_trial(trial)
    finally:
        for storage in (first, fresh):
            storage.remove_session()
            storage.engine.dispose()


def _outcome(storage: object, trial_id: int, state: TrialState,
             values: list[float] | None) -> object:
    try:
        return storage.set_trial_state_values(trial_id, state, values)
    except Exception as exc:  # the exception type is the outcome to compare
        return type(exc).__name__


def test_state_writes_answer_as_optunas(storage_url: str) -> None:
    """The service's state write (plain statements, values as one upsert) gives Optuna's
    answers and leaves the same rows, case by case, on twin studies."""
    plain = optuna.storages.RDBStorage(storage_url)
    service = open_storage(storage_url, heartbeat_interval=30, grace_period=60)
    inf = float("inf")
    cases = [  # (trial's state before, state written, values)
        (TrialState.RUNNING, TrialState.COMPLETE, [0.5, inf, -inf]),
        (TrialState.RUNNING, TrialState.FAIL, None),
        (TrialState.RUNNING, TrialState.PRUNED, [0.25, 1.0, 2.0]),
        (TrialState.RUNNING, TrialState.RUNNING, None),
        (TrialState.WAITING, TrialState.RUNNING, None),
        (TrialState.COMPLETE, TrialState.COMPLETE, [1.0, 2.0, 3.0]),
        (TrialState.FAIL, TrialState.RUNNING, None),
    ]
    try:
        views = {}
        for name, storage in (("plain", plain), ("service", service)):
            study_id = storage.create_new_study(
                [optuna.study.StudyDirection.MINIMIZE] * 3, f"twin_{name}")
            seen = []
            for before, state, values in cases:
                template = optuna.trial.create_trial(
                    state=before,
                    values=[9.0, 9.0, 9.0] if before == TrialState.COMPLETE else None,
                    params={"x": 1.0}, distributions={"x": SPACE["lr"]})
                trial_id = plain.create_new_trial(study_id, template_trial=template)
                answer = _outcome(storage, trial_id, state, values)
                after = plain.get_trial(trial_id)
                seen.append((answer, after.state, after.values,
                             after.datetime_start is not None,
                             after.datetime_complete is not None))
            seen.append(_outcome(storage, 10**9, TrialState.COMPLETE, [1.0, 2.0, 3.0]))
            views[name] = seen
        assert views["service"] == views["plain"]
        assert views["plain"][0][2] == [0.5, inf, -inf]
        assert views["plain"][-1] == "KeyError"
    finally:
        plain.engine.dispose()
        service.remove_session()
        service.engine.dispose()


def test_the_trial_just_created_is_not_read_back(storage_url: str) -> None:
    """``optuna.Trial`` loads the trial ``ask`` has just created (6 queries in Optuna); the
    service answers from the trial as created, once, identical to what the database holds."""
    service = open_storage(storage_url, heartbeat_interval=30, grace_period=60)
    other = optuna.storages.RDBStorage(storage_url)
    study = optuna.create_study(study_name="fresh", storage=service)
    counter = StatementCounter(service.engine)
    try:
        trial_id = study._storage.create_new_trial(study._study_id)  # as ``ask`` does
        before = counter.count
        created = study._storage.get_trial(trial_id)  # as ``optuna.Trial`` does next
        assert counter.count == before  # answered without a query ...
        service.get_trial(trial_id)
        assert counter.count > before  # ... once
        stored = other.get_trial(trial_id)
        assert (created.number, created.state, created.datetime_start, created.params,
                created.user_attrs, created.system_attrs) == \
            (stored.number, stored.state, stored.datetime_start, stored.params,
             stored.user_attrs, stored.system_attrs)
    finally:
        counter.close()
        other.engine.dispose()
        service.remove_session()
        service.engine.dispose()


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
