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
import time
from collections.abc import Callable, Container
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.config import StudySpec
from hpo.objective import Objective
from hpo.progress import Progress
from hpo.results import ParetoFront, write_results
from hpo.storage import is_connection_error, worker_trials
from trainers.errors import StopRequested, TrialFailed

log = logging.getLogger("hpo")

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
MAX_CONSECUTIVE_FAILURES = 5
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# How long a worker rides out an unreachable database (server restart, failover) before giving
# up, and how often it looks again meanwhile.
STORAGE_OUTAGE_LIMIT_S = 300.0
STORAGE_RETRY_S = 2.0
# Seconds between looks at a study whose remaining trials run in other workers.
WAIT_POLL_MAX_S = 5.0


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


def _interruptible_sleep(seconds: float, objective: Objective) -> None:
    end = time.monotonic() + seconds
    while not objective.stop_requested and time.monotonic() < end:
        time.sleep(min(0.2, max(0.0, end - time.monotonic())))


def _chain_has(exc: BaseException | None, test: Callable[[BaseException], bool]) -> bool:
    """Whether ``exc`` or anything in its cause/context chain passes ``test``.

    Optuna can replace an error of its ``tell`` by another one raised while handling it
    (an UnboundLocalError, an AssertionError), so the whole chain is checked.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if test(exc):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _is_storage_error(exc: BaseException | None) -> bool:
    """The database could not be reached (not: a write it refused)."""
    return is_connection_error(exc)


def _was_reclaimed(exc: BaseException) -> bool:
    """The trial was finished by someone else (declared dead by another worker after a long
    outage): Optuna says so with UpdateFinishedTrialError or "Cannot tell a FAIL trial"."""
    return _chain_has(exc, lambda e: isinstance(e, optuna.exceptions.UpdateFinishedTrialError)
                      or (isinstance(e, ValueError) and str(e).startswith("Cannot tell a ")))


def run_worker(study: optuna.Study, spec: StudySpec, *, output: Path, target: int,
               timeout: float | None, announce: bool = True) -> int:
    objective = Objective(spec, output_dir=output)
    guard = BudgetGuard(target)
    progress = Progress(spec, target=target, announce=announce)
    study_dir = Path(output) / spec.name
    study_dir.mkdir(parents=True, exist_ok=True)
    metric_names = study.metric_names
    front = ParetoFront(study.directions)  # shared by the snapshots: updated per trial
    heartbeat = spec.storage.heartbeat_interval
    # number/outcome/storage_error: the trial just run and how it ended;
    # pending: the trial whose progress line is due once a trial list shows it finished.
    state: dict[str, Any] = {"interrupts": 0, "failures": 0, "number": None, "outcome": None,
                             "storage_error": False, "pending": None}

    def on_signal(signum: int, _frame: object) -> None:
        state["interrupts"] += 1
        name = signal.Signals(signum).name
        if state["interrupts"] > 1 and signum == signal.SIGINT:
            os._exit(EXIT_INTERRUPTED)  # second Ctrl-C: leave now; heartbeats reclaim the trial
        log.warning("%s received: stopping the running trial (it will be retried); "
                    "press Ctrl-C again to exit at once", name)
        objective.request_stop(name)

    def snapshot() -> StudySnapshot:
        return StudySnapshot(study, study.get_trials(deepcopy=False), metric_names, front)

    def write_results_now(view: StudySnapshot) -> None:
        write_results(view, study_dir)

    def report_pending(view: StudySnapshot) -> None:
        """Progress line and results files of the previous trial."""
        number, state["pending"] = state["pending"], None
        trial = view.trial(number) if number is not None else None
        if trial is None or not trial.state.is_finished():
            return  # its final state never reached the storage: it goes stale, is retried
        try:
            write_results_now(view)
            if not trial.user_attrs.get("surplus"):
                progress.trial_done(view, trial)
        except OSError:  # a full disk must not stop the study: the files catch up later
            log.warning("could not report trial %d", number, exc_info=True)

    def guarded(trial: optuna.Trial) -> float | list[float]:
        state.update(number=trial.number, outcome="fail", storage_error=False)
        # Read after this trial was created: it holds every trial with a smaller number.
        if guard.is_surplus(study.get_trials(deepcopy=False), trial.number):
            state["outcome"] = "surplus"
            trial.set_user_attr("surplus", True)
            raise TrialFailed("surplus: the study target was reached by other trials")
        try:
            values = objective(trial)
        except optuna.TrialPruned:
            state["outcome"] = "pruned"
            raise
        except Exception as exc:
            state["storage_error"] = _is_storage_error(exc)
            raise
        state["outcome"] = "complete"
        return values

    def requeue_after_outage(view: StudySnapshot, number: int) -> None:
        """A trial that lost the database mid-run is not at fault: queue it again (it
        resumes from its last checkpoint), within the study's retry limit."""
        trial = view.trial(number)
        if trial is None or trial.state != TrialState.FAIL:
            return  # still RUNNING: its heartbeat goes stale and Optuna's callback retries it
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=spec.storage.max_retry)
        callback(study, study._storage.get_trial(trial._trial_id))
        log.warning("trial %d lost the storage connection; queued for retry", number)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    frozen = _freeze_heap()
    deadline = time.monotonic() + timeout if timeout else None
    check_stale, waiting_announced = True, False
    outage_since: float | None = None
    code: int | None = None
    try:
        while code is None:
            if objective.stop_requested:
                code = EXIT_INTERRUPTED
                break
            try:
                if check_stale:
                    optuna.storages.fail_stale_trials(study)
                    check_stale = False
                if state["storage_error"]:
                    requeue_after_outage(snapshot(), state["number"])
                    state["storage_error"] = False
                view = snapshot()
                report_pending(view)
                code = _decide(view, target=target, deadline=deadline,
                               failures=state["failures"])
                if code is not None:
                    if code == EXIT_OK and _finished(view) >= target:
                        progress.done(study)
                    break
                if _others_hold_the_rest(view, target):
                    # Stay until they finish: if their worker dies, its retry runs here.
                    if not waiting_announced:
                        log.info("the remaining %d trial(s) are running in other workers; "
                                 "waiting for them (a dead worker's trial is retried "
                                 "here)", target - _finished(view))
                        waiting_announced = True
                    _interruptible_sleep(min(float(heartbeat), WAIT_POLL_MAX_S), objective)
                    check_stale = True
                    continue
                progress.trial_started(_finished(view))
                outage_since = None
                with worker_trials(study):
                    study.optimize(guarded, n_trials=1, catch=(TrialFailed,))
            except StopRequested:
                log.warning("trial interrupted and queued for retry; rerun the same command "
                            "to resume")
                code = EXIT_INTERRUPTED
            except KeyboardInterrupt:
                code = EXIT_INTERRUPTED
            except Exception as exc:
                if _was_reclaimed(exc):
                    # The database was out for longer than the grace period: another worker
                    # declared this trial dead and queued its retry, which resumes from the
                    # trial's last checkpoint. Nothing left to store here; go on.
                    log.warning("trial %s was reclaimed by another worker while the storage "
                                "was unreachable; its retry resumes from its last checkpoint",
                                state["number"])
                    state["outcome"] = None
                    continue
                if not _is_storage_error(exc):
                    raise
                now = time.monotonic()
                if outage_since is None:
                    outage_since = now
                    log.warning("storage unreachable (%s); retrying for up to %d s",
                                exc.__cause__ or exc, STORAGE_OUTAGE_LIMIT_S)
                if now - outage_since >= STORAGE_OUTAGE_LIMIT_S:
                    log.error("storage unreachable for %d s; stopping this worker (its "
                              "running trial is retried by the next worker)",
                              STORAGE_OUTAGE_LIMIT_S)
                    return EXIT_FAILED
                _interruptible_sleep(STORAGE_RETRY_S, objective)
                check_stale = True
                continue
            finally:
                _count_outcome(state)
            # Frees what a trial left in reference cycles (a model, CUDA tensors) before the
            # next one allocates its own.
            gc.collect()
        _final_report(snapshot, report_pending, write_results_now)
        return code
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if frozen:
            gc.unfreeze()


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


def _count_outcome(state: dict[str, Any]) -> None:
    """Consecutive failures (surplus trials are no failures); the trial's line becomes due."""
    outcome, state["outcome"] = state["outcome"], None
    if outcome is None:
        return
    state["last_outcome"] = outcome
    if outcome == "fail":
        state["failures"] += 1
    elif outcome in ("complete", "pruned"):
        state["failures"] = 0
    state["pending"] = state["number"]


def _final_report(snapshot: Any, report_pending: Any, write_results_now: Any) -> None:
    try:
        view = snapshot()
        report_pending(view)
        write_results_now(view)
    except Exception as exc:
        if not _is_storage_error(exc):
            raise
        log.warning("results files not refreshed: storage unreachable (%s)", exc)


def _finished(view: StudySnapshot) -> int:
    return sum(t.state in FINISHED for t in view.get_trials())


def _others_hold_the_rest(view: StudySnapshot, target: int) -> bool:
    trials = view.get_trials()
    running = sum(t.state == TrialState.RUNNING for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    return waiting == 0 and _finished(view) + running >= target


def _decide(view: StudySnapshot, *, target: int, deadline: float | None,
            failures: int) -> int | None:
    """The exit code if this worker should stop now, else None."""
    finished = _finished(view)
    if finished >= target:
        return EXIT_OK
    if deadline is not None and time.monotonic() >= deadline:
        log.info("timeout reached with %d/%d finished trials", finished, target)
        return EXIT_OK
    if failures >= MAX_CONSECUTIVE_FAILURES:
        trials = view.get_trials()
        last = trials[-1].user_attrs.get("fail_reason", "unknown") if trials else "unknown"
        log.error("%d trials in a row failed (last: %s); stopping this worker", failures, last)
        return EXIT_FAILED
    return None
