"""One worker's trial loop: run trials until the study-wide target, a timeout or a signal.

Heartbeats only work through ``study.optimize``, so each trial is one ``optimize(n_trials=1)``
call; between trials the loop re-reads the study, fails stale RUNNING trials of dead workers
(so their retries are queued now, not when some trial happens to finish), and decides whether
another trial is still needed.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.config import StudySpec
from hpo.objective import Objective
from hpo.progress import Progress
from hpo.results import write_results
from trainers.errors import StopRequested, TrialFailed

log = logging.getLogger("hpo")

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
MAX_CONSECUTIVE_FAILURES = 5
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class BudgetGuard:
    """Ends a trial at once when the study-wide target is already covered by earlier trials.

    Trial numbers are handed out atomically by the database, so "fewer than ``target``
    non-failed trials have a smaller number" is a rule every worker on every host evaluates
    the same way: exactly ``target`` trials run even when workers race to start the last one.
    A trial that loses the race ends FAIL with ``surplus = true`` and is never retried.
    """

    def __init__(self, target: int) -> None:
        self.target = target

    def is_surplus(self, study: optuna.Study, number: int) -> bool:
        ahead = sum(1 for t in study.get_trials(deepcopy=False)
                    if t.number < number and t.state != TrialState.FAIL)
        return ahead >= self.target


def run_worker(study: optuna.Study, spec: StudySpec, *, output: Path, target: int,
               timeout: float | None, announce: bool = True) -> int:
    objective = Objective(spec, output_dir=output)
    guard = BudgetGuard(target)
    progress = Progress(spec, target=target, announce=announce)
    study_dir = Path(output) / spec.name
    study_dir.mkdir(parents=True, exist_ok=True)
    state = {"interrupts": 0, "failures": 0}

    def on_signal(signum: int, _frame: object) -> None:
        state["interrupts"] += 1
        name = signal.Signals(signum).name
        if state["interrupts"] > 1 and signum == signal.SIGINT:
            os._exit(EXIT_INTERRUPTED)  # second Ctrl-C: leave now; heartbeats reclaim the trial
        log.warning("%s received: stopping the running trial (it will be retried); "
                    "press Ctrl-C again to exit at once", name)
        objective.request_stop(name)

    def guarded(trial: optuna.Trial) -> float | list[float]:
        if guard.is_surplus(study, trial.number):
            trial.set_user_attr("surplus", True)
            raise TrialFailed("surplus: the study target was reached by other trials")
        return objective(trial)

    def after_trial(study_: optuna.Study, trial: FrozenTrial) -> None:
        write_results(study_, study_dir)
        if trial.user_attrs.get("surplus"):
            return
        state["failures"] = state["failures"] + 1 if trial.state == TrialState.FAIL else 0
        progress.trial_done(study_, trial)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    deadline = time.monotonic() + timeout if timeout else None
    try:
        while True:
            if objective.stop_requested:
                return EXIT_INTERRUPTED
            optuna.storages.fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in FINISHED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            if finished >= target:
                progress.done(study)
                return EXIT_OK
            if waiting == 0 and finished + running >= target:
                log.info("the remaining %d trial(s) are running in other workers",
                         target - finished)
                return EXIT_OK
            if deadline is not None and time.monotonic() >= deadline:
                log.info("timeout reached with %d/%d finished trials", finished, target)
                return EXIT_OK
            if state["failures"] >= MAX_CONSECUTIVE_FAILURES:
                last = trials[-1].user_attrs.get("fail_reason", "unknown")
                log.error("%d trials in a row failed (last: %s); stopping this worker",
                          state["failures"], last)
                return EXIT_FAILED
            progress.trial_started(finished)
            try:
                study.optimize(guarded, n_trials=1, catch=(TrialFailed,), callbacks=[after_trial],
                               gc_after_trial=True)
            except StopRequested:
                write_results(study, study_dir)
                log.warning("trial interrupted and queued for retry; rerun the same command "
                            "to resume")
                return EXIT_INTERRUPTED
            except KeyboardInterrupt:
                write_results(study, study_dir)
                return EXIT_INTERRUPTED
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
