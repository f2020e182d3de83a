"""One worker's trial loop: run trials until the study-wide target, a timeout or a signal.

Heartbeats only work through ``study.optimize``, so each trial is one ``optimize(n_trials=1)``
call (which first fails stale RUNNING trials of dead workers, so their retries run next). When a
worker starts, and while it waits for trials that other workers are still running, it fails stale
trials itself: a study whose other workers all died is picked up here, not left with zombies.

Trials run inside :func:`hpo.storage.worker_trials`, so each is born with its first heartbeat.
The trial list Optuna's ``ask`` fetches for the sampler also serves the budget guard and the
previous trial's progress line; the study is read again between trials only near the target.
The results files are rewritten after every finished trial and when the worker stops.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Container
from pathlib import Path
from typing import Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import attrs
from hpo.config import StudySpec
from hpo.faults import EnvironmentFault
from hpo.objective import Objective
from hpo.progress import Progress
from hpo.results import ParetoFront, write_results
from hpo.storage import worker_trials
from hpo.storage.errors import caused_by, is_connection_error
from trainers.errors import StopRequested, TrialFailed

log = logging.getLogger("hpo")

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


def interrupted_exit(stop: str | None) -> int:
    """The exit code of a worker stopped by the signal named ``stop``: 128 + its number, as
    a shell reports a process the signal ended (SIGTERM 143, a scheduler's preemption; SIGINT
    130, Ctrl-C); 130 for anything else."""
    try:
        return 128 + int(signal.Signals[str(stop)])
    except KeyError:
        return EXIT_INTERRUPTED
MAX_CONSECUTIVE_FAILURES = 5
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# How long a worker rides out an unreachable database (server restart, failover) before giving
# up, and how often it looks again meanwhile.
STORAGE_OUTAGE_LIMIT_S = 300.0
STORAGE_RETRY_S = 2.0
# Seconds between looks at a study whose remaining trials run in other workers.
WAIT_POLL_MAX_S = 5.0

# How the trial just run ended, as the failure count sees it (a surplus trial is no failure).
Outcome = Literal["complete", "pruned", "fail", "surplus"]


class BudgetGuard:
    """Ends a trial at once when the study-wide target is already covered by earlier trials.

    Trial numbers are handed out atomically by the database, so "fewer than ``target``
    non-failed trials have a smaller number" is a rule every worker on every host evaluates
    the same way: exactly ``target`` trials run even when workers race to start the last one.
    A trial that loses the race ends FAIL with ``surplus = true`` and is never retried.
    """

    def __init__(self, target: int) -> None:
        self.target = target

    def is_surplus(self, trials: list[FrozenTrial], number: int) -> bool:
        """``trials``: a list read after trial ``number`` was created (so it holds every trial
        with a smaller number; their states may be older, which only errs towards surplus)."""
        ahead = sum(1 for t in trials if t.number < number and t.state != TrialState.FAIL)
        return ahead >= self.target


class StudySnapshot:
    """The study as one ``get_trials`` call saw it, read by progress lines and result files.

    Offers the parts of ``optuna.Study`` that ``hpo.progress`` and ``hpo.results`` read, so a
    finished trial costs one storage read, not one per line and file (multi-objective
    ``Study.best_trials`` deep-copies every trial).
    """

    def __init__(self, study: optuna.Study, trials: list[FrozenTrial],
                 metric_names: list[str] | None, front: ParetoFront) -> None:
        self.study_name = study.study_name
        self.directions = study.directions
        self.metric_names = metric_names
        self._trials = trials
        self._front = front

    def get_trials(self, deepcopy: bool = False,
                   states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        if states is None:
            return list(self._trials)
        return [t for t in self._trials if t.state in states]

    @property
    def trials(self) -> list[FrozenTrial]:
        return list(self._trials)

    def trial(self, number: int) -> FrozenTrial | None:
        return next((t for t in reversed(self._trials) if t.number == number), None)

    @property
    def best_trials(self) -> list[FrozenTrial]:
        return self._front.update(self._trials)


def run_worker(study: optuna.Study, spec: StudySpec, *, output: Path, target: int,
               timeout: float | None, announce: bool = True) -> int:
    """Run trials of ``study`` in this process until ``target`` trials of the study (run by any
    worker) finished, ``timeout`` seconds passed, a signal or too many failures in a row.

    Returns the exit code: 0 target or timeout reached, 1 failures or the storage lost for good,
    130 interrupted by SIGINT, 143 by SIGTERM (the running trial is queued for retry).
    """
    return Worker(study, spec, output=output, target=target, timeout=timeout,
                  announce=announce).run()


class Worker:
    """One process's trial loop (module docstring); :meth:`run` runs it once.

    Between trials it keeps the trial just run (``number``), how it ended (``outcome``, None
    once counted) and whether it lost the storage (``storage_error``); the consecutive
    ``failures``; and the trial whose progress line is due once a trial list shows it finished
    (``pending``).
    """

    def __init__(self, study: optuna.Study, spec: StudySpec, *, output: Path, target: int,
                 timeout: float | None, announce: bool = True) -> None:
        self.study = study
        self.spec = spec
        self.target = target
        self.timeout = timeout
        self.objective = Objective(spec, output_dir=output)
        self.guard = BudgetGuard(target)
        self.progress = Progress(spec, target=target, announce=announce)
        self.study_dir = Path(output) / spec.name
        self.study_dir.mkdir(parents=True, exist_ok=True)
        self.metric_names = study.metric_names
        self.front = ParetoFront(study.directions)  # shared by the snapshots: updated per trial
        self.deadline: float | None = None  # set when the loop starts
        self.interrupts = 0
        self.failures = 0
        self.number: int | None = None
        self.outcome: Outcome | None = None
        self.storage_error = False
        self.pending: int | None = None
        self.check_stale = True  # fail stale trials of dead workers before the next look
        self.waiting_announced = False
        self.outage_since: float | None = None

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        """The trial loop, with this worker's signal handlers; returns the exit code."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        frozen = _freeze_heap()
        self.deadline = time.monotonic() + self.timeout if self.timeout else None
        try:
            code: int | None = None
            while code is None:
                code = self._turn()
            self._final_report()
            return code
        except _StorageGone:
            return EXIT_FAILED  # no final report: the storage is unreachable
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            if frozen:
                gc.unfreeze()

    def _turn(self) -> int | None:
        """One look at the study and, when this worker should, one trial: the exit code to
        stop with, or None to go on."""
        if self.objective.stop_requested:
            return interrupted_exit(self.objective.stop_requested)
        code = None
        try:
            if self.check_stale:
                optuna.storages.fail_stale_trials(self.study)
                self.check_stale = False
            if self.storage_error:
                self._requeue_after_outage(self._snapshot())
                self.storage_error = False
            view = self._snapshot()
            self._report_pending(view)
            code = self._exit_code(view)
            if code is not None:
                if code == EXIT_OK and _finished(view) >= self.target:
                    self.progress.done(self.study)
                return code
            if _others_hold_the_rest(view, self.target):
                self._wait_for_others(view)
                return None
            self.progress.trial_started(_finished(view))
            self.outage_since = None
            with worker_trials(self.study):
                self.study.optimize(self._trial, n_trials=1, catch=(TrialFailed,))
        except StopRequested:
            log.warning("trial interrupted and queued for retry; rerun the same command "
                        "to resume")
            code = interrupted_exit(self.objective.stop_requested)
        except EnvironmentFault as exc:
            # Every trial would hit it: stop at the first, the trial queued again.
            print(f"error: {exc} (trial {self.number} is queued again)", file=sys.stderr)
            self.outcome = None
            code = EXIT_FAILED
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
        except Exception as exc:
            if _was_reclaimed(exc):
                self._reclaimed()
            elif is_connection_error(exc):
                self._ride_out_outage(exc)
            else:
                raise
            return None
        finally:
            self._count_outcome()
        # Frees what a trial left in reference cycles (a model, CUDA tensors) before the
        # next one allocates its own.
        gc.collect()
        return code

    def _trial(self, trial: optuna.Trial) -> float | list[float]:
        """The objective ``study.optimize`` runs: the budget guard, then the workload."""
        self.number = trial.number
        self.outcome = "fail"
        self.storage_error = False
        # Read after this trial was created: it holds every trial with a smaller number.
        if self.guard.is_surplus(self.study.get_trials(deepcopy=False), trial.number):
            self.outcome = "surplus"
            trial.set_user_attr(attrs.SURPLUS, True)
            raise TrialFailed("surplus: the study target was reached by other trials")
        try:
            values = self.objective(trial)
        except optuna.TrialPruned:
            self.outcome = "pruned"
            raise
        except Exception as exc:
            self.storage_error = is_connection_error(exc)
            raise
        self.outcome = "complete"
        return values

    def _wait_for_others(self, view: StudySnapshot) -> None:
        """Stay until they finish: if their worker dies, its retry runs here."""
        if not self.waiting_announced:
            log.info("the remaining %d trial(s) are running in other workers; waiting for "
                     "them (a dead worker's trial is retried here)",
                     self.target - _finished(view))
            self.waiting_announced = True
        self._sleep(min(float(self.spec.storage.heartbeat_interval), WAIT_POLL_MAX_S))
        self.check_stale = True

    def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when a signal asks the worker to stop."""
        end = time.monotonic() + seconds
        while not self.objective.stop_requested and time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))

    # -- when to stop -----------------------------------------------------------------------
    def _exit_code(self, view: StudySnapshot) -> int | None:
        """The exit code if this worker should stop now, else None."""
        finished = _finished(view)
        if finished >= self.target:
            return EXIT_OK
        if self.deadline is not None and time.monotonic() >= self.deadline:
            log.info("timeout reached with %d/%d finished trials", finished, self.target)
            return EXIT_OK
        if self.failures >= MAX_CONSECUTIVE_FAILURES:
            trials = view.get_trials()
            last = trials[-1].user_attrs if trials else {}
            log.error("%d trials in a row failed (last: %s); stopping this worker",
                      self.failures, last.get(attrs.FAIL_REASON, "unknown"))
            return EXIT_FAILED
        return None

    def _count_outcome(self) -> None:
        """Consecutive failures (surplus trials are no failures); the trial's line becomes due."""
        outcome, self.outcome = self.outcome, None
        if outcome is None:
            return
        if outcome == "fail":
            self.failures += 1
        elif outcome in ("complete", "pruned"):
            self.failures = 0
        self.pending = self.number

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.interrupts += 1
        name = signal.Signals(signum).name
        if self.interrupts > 1 and signum == signal.SIGINT:
            os._exit(EXIT_INTERRUPTED)  # second Ctrl-C: leave now; heartbeats reclaim the trial
        log.warning("%s received: stopping the running trial (it will be retried); "
                    "press Ctrl-C again to exit at once", name)
        self.objective.request_stop(name)
        if signum == signal.SIGTERM and self.interrupts == 1:
            # A scheduler kills soon after SIGTERM: leave on time even if the trial is inside
            # a long step; its heartbeat retry resumes it from its newest checkpoint.
            timer = threading.Timer(self.spec.run.preempt_grace_s, self._grace_expired)
            timer.daemon = True
            timer.start()

    def _grace_expired(self) -> None:
        log.warning("the trial did not stop within preempt_grace_s = %g s; exiting now (its "
                    "heartbeat retry resumes it from its newest checkpoint)",
                    self.spec.run.preempt_grace_s)
        ctx = self.objective.current_ctx
        if ctx is not None:
            try:  # best effort: the retry is then not charged as a crash
                Objective._record_stop(ctx.trial, ctx, "SIGTERM")
            except Exception:  # noqa: BLE001 - leaving on time matters more
                pass
        logging.shutdown()
        os._exit(interrupted_exit("SIGTERM"))

    # -- a database that went away ----------------------------------------------------------
    def _ride_out_outage(self, exc: BaseException) -> None:
        """Wait a little for an unreachable storage; raises _StorageGone past the limit."""
        now = time.monotonic()
        if self.outage_since is None:
            self.outage_since = now
            log.warning("storage unreachable (%s); retrying for up to %d s",
                        exc.__cause__ or exc, STORAGE_OUTAGE_LIMIT_S)
        if now - self.outage_since >= STORAGE_OUTAGE_LIMIT_S:
            log.error("storage unreachable for %d s; stopping this worker (its running trial "
                      "is retried by the next worker)", STORAGE_OUTAGE_LIMIT_S)
            raise _StorageGone
        self._sleep(STORAGE_RETRY_S)
        self.check_stale = True

    def _reclaimed(self) -> None:
        # The database was out for longer than the grace period: another worker declared
        # this trial dead and queued its retry, which resumes from the trial's last
        # checkpoint. Nothing left to store here; go on.
        log.warning("trial %s was reclaimed by another worker while the storage was "
                    "unreachable; its retry resumes from its last checkpoint", self.number)
        self.outcome = None

    def _requeue_after_outage(self, view: StudySnapshot) -> None:
        """A trial that lost the database mid-run is not at fault: queue it again (it
        resumes from its last checkpoint), within the study's retry limit."""
        trial = view.trial(self.number) if self.number is not None else None
        if trial is None or trial.state != TrialState.FAIL:
            return  # still RUNNING: its heartbeat goes stale and Optuna's callback retries it
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=self.spec.storage.max_retry)
        callback(self.study, self.study._storage.get_trial(trial._trial_id))
        log.warning("trial %d lost the storage connection; queued for retry", self.number)

    # -- progress lines and results files ---------------------------------------------------
    def _snapshot(self) -> StudySnapshot:
        return StudySnapshot(self.study, self.study.get_trials(deepcopy=False),
                             self.metric_names, self.front)

    def _report_pending(self, view: StudySnapshot) -> None:
        """Progress line and results files of the previous trial."""
        number, self.pending = self.pending, None
        trial = view.trial(number) if number is not None else None
        if trial is None or not trial.state.is_finished():
            return  # its final state never reached the storage: it goes stale, is retried
        try:
            write_results(view, self.study_dir)
            if not trial.user_attrs.get(attrs.SURPLUS):
                self.progress.trial_done(view, trial)
        except OSError:  # a full disk must not stop the study: the files catch up later
            log.warning("could not report trial %d", number, exc_info=True)

    def _final_report(self) -> None:
        try:
            view = self._snapshot()
            self._report_pending(view)
            write_results(view, self.study_dir)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            log.warning("results files not refreshed: storage unreachable (%s)", exc)


class _StorageGone(Exception):
    """The storage stayed unreachable for ``STORAGE_OUTAGE_LIMIT_S``: the worker stops."""


def _was_reclaimed(exc: BaseException) -> bool:
    """The trial was finished by someone else (declared dead by another worker after a long
    outage): Optuna says so with UpdateFinishedTrialError or "Cannot tell a FAIL trial".
    Optuna can replace that error by another one raised while handling it, so the whole
    cause/context chain is checked."""
    return caused_by(exc, lambda e: isinstance(e, optuna.exceptions.UpdateFinishedTrialError)
                     or (isinstance(e, ValueError) and str(e).startswith("Cannot tell a ")))


def _freeze_heap() -> bool:
    """Move every object alive now (imported modules: ~180k objects with torch) out of the
    collector's reach for the worker's lifetime; True if this call froze them.

    It keeps the full collection after each trial (which a GPU trial needs: it frees CUDA
    tensors held in reference cycles before the next trial allocates) at milliseconds instead
    of ~0.3 s. On a demo trial that difference is below what ``scripts/bench_storage.py``
    (row ``demo_trial``) can resolve on a busy machine; it is kept for studies of short trials.
    What is alive at worker start stays alive anyway.
    """
    if gc.get_freeze_count():
        return False  # an outer caller froze the heap already
    gc.freeze()  # O(1): the generations are moved, not walked
    return True


def _finished(view: StudySnapshot) -> int:
    return sum(t.state in FINISHED for t in view.get_trials())


def _others_hold_the_rest(view: StudySnapshot, target: int) -> bool:
    trials = view.get_trials()
    running = sum(t.state == TrialState.RUNNING for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    return waiting == 0 and _finished(view) + running >= target
