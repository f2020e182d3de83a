"""Optuna's ``RDBStorage`` with the three things a long-running worker needs, and nothing else.

Optuna's semantics are kept: Optuna's own storage tests (``tests/storages_tests`` of its
sdist) pass against this class on SQLite and PostgreSQL, with heartbeats on and off
(``tests/hpo/test_optuna_storage_suite.py``). What it adds:

* A heartbeat that cannot reach the database (a restarting server) is logged and retried at
  the next beat instead of killing the heartbeat thread. Without this, a trial that outlives a
  database restart stops beating and is failed as stale while it is still training.
* A trial's final state write is retried through a short outage (a server restart takes
  seconds), but only for connection-level errors: losing the result of a trial that trained
  for hours is the one loss a restart must not cause. A constraint or data error is raised at
  once, as Optuna raises it.
* Inside :func:`hpo.storage.worker_trials` (the service's worker, and only in its thread) a
  trial starts with its first heartbeat: a trial created RUNNING gets its heartbeat row in the
  transaction that creates it, a queued trial one in the commit right after the worker took
  it. Optuna's stale check skips RUNNING trials without a heartbeat row, so a worker killed
  before its heartbeat thread's first beat would leave a zombie no worker reclaims. Trials
  started elsewhere (``study.ask()`` from a notebook, ``copy_study``) get no heartbeat, as in
  Optuna, and are never failed as stale.

The module imports optuna at the top; :mod:`hpo.storage` imports it only when a storage is
opened. The class lives at module level so that a storage (and a study holding one) pickles:
spawn/forkserver multiprocessing, joblib/loky and dask send it to other processes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.storages._rdb import models
from optuna.trial import TrialState

from hpo.storage.errors import is_connection_error, short_reason

log = logging.getLogger("hpo")

# A trial's final state is retried this long through a database outage (a restart takes
# seconds), pausing between attempts; pool_pre_ping hands out a fresh connection once it's back.
STATE_WRITE_RETRY_S = 60.0
STATE_WRITE_PAUSE_S = 1.0
# A heartbeat that fails is reported once per outage, not once per beat.
OUTAGE_LOG_EVERY_S = 60.0


class ServiceRDBStorage(optuna.storages.RDBStorage):
    """``RDBStorage`` with heartbeats that survive a database restart, a final state write
    retried through a short outage, and worker trials born with a heartbeat (module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._worker_thread = threading.local()
        self._last_outage_log = 0.0

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_worker_thread", None)  # thread-local: not picklable, and per process
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._worker_thread = threading.local()

    # -- trials the service's worker starts ---------------------------------------------------
    @contextmanager
    def worker_trials(self) -> Iterator[None]:
        """Trials this thread starts inside the block are born with a heartbeat."""
        previous = getattr(self._worker_thread, "active", False)
        self._worker_thread.active = True
        try:
            yield
        finally:
            self._worker_thread.active = previous

    def _births_beat(self) -> bool:
        return self.heartbeat_interval is not None and getattr(
            self._worker_thread, "active", False)

    def _get_prepared_new_trial(self, study_id: int, template_trial: Any,
                                session: Any) -> Any:
        """Changes Optuna's trial creation only inside :meth:`worker_trials`: a trial created
        RUNNING (``ask``, no template) gets its heartbeat row in the same transaction, so no
        moment exists in which it is RUNNING without one (Optuna writes the first beat from the
        heartbeat thread a moment later). Proved by
        ``test_storage.py::test_a_worker_trial_is_born_with_its_heartbeat`` and
        ``::test_a_worker_killed_before_its_first_beat_leaves_no_zombie``; outside the block
        (``ask`` from a notebook, ``copy_study``) the behaviour is Optuna's, proved by Optuna's
        own suite and ``::test_ask_and_copied_trials_are_never_stale``."""
        trial = super()._get_prepared_new_trial(study_id, template_trial, session)
        if template_trial is None and trial.state == TrialState.RUNNING and self._births_beat():
            # The row's default timestamp is the database's clock, as Optuna's beats use.
            session.add(models.TrialHeartbeatModel(trial_id=trial.trial_id))
        return trial

    # -- the final state write, retried through a short outage --------------------------------
    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        """Optuna's write; a final state (COMPLETE, PRUNED, FAIL) is retried for up to
        ``STATE_WRITE_RETRY_S`` when the database cannot be reached (never for a constraint or
        data error). Proved by ``test_storage.py::test_the_final_state_survives_an_outage``,
        ``::test_a_statement_error_is_not_retried`` and
        ``::test_a_trial_finished_elsewhere_meanwhile_is_success_only_if_it_holds_this_write``.

        When an attempt's commit went through but its answer was lost, the next attempt finds
        the trial finished: that counts as success only if the trial holds exactly the state
        and values written here; a trial another worker failed meanwhile raises Optuna's
        ``UpdateFinishedTrialError``. A queued trial taken to RUNNING inside
        :meth:`worker_trials` gets its first heartbeat right after."""
        deadline = time.monotonic() + STATE_WRITE_RETRY_S
        attempt = 0
        while True:
            attempt += 1
            try:
                taken = super().set_trial_state_values(trial_id, state=state, values=values)
                break
            except optuna.exceptions.UpdateFinishedTrialError:
                if attempt > 1 and self._holds(trial_id, state, values):
                    return True
                raise
            except Exception as exc:
                # Taking a queued trial (RUNNING) is not retried: had the lost attempt gone
                # through, a retry would answer False for a trial this worker holds.
                if (not state.is_finished() or not is_connection_error(exc)
                        or time.monotonic() >= deadline):
                    raise
                log.warning("storing the state of trial id %d failed (%s); retrying", trial_id,
                            short_reason(exc))
                time.sleep(STATE_WRITE_PAUSE_S)
        if taken and state == TrialState.RUNNING and self._births_beat():
            self.record_heartbeat(trial_id)
        return taken

    def _holds(self, trial_id: int, state: TrialState,
               values: Sequence[float] | None) -> bool:
        trial = self.get_trial(trial_id)
        if trial.state != state:
            return False
        return values is None or trial.values == [float(v) for v in values]

    # -- heartbeats that survive a database restart -------------------------------------------
    def record_heartbeat(self, trial_id: int) -> None:
        """Optuna's beat; when the database cannot be reached the beat is skipped (logged once
        per outage) instead of raising, which would end Optuna's heartbeat thread for good.
        Proved by ``test_storage.py::test_heartbeats_survive_a_database_restart``."""
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            now = time.monotonic()
            if now - self._last_outage_log >= OUTAGE_LOG_EVERY_S:
                self._last_outage_log = now
                log.warning("heartbeat of trial id %d could not reach the storage (%s); "
                            "retrying at the next beat", trial_id, short_reason(exc))
