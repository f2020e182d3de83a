"""SIGINT/SIGTERM: the running trial ends so that it will be retried, outputs are flushed, and
the process exits 128 + the signal's number (143 for SIGTERM, 130 for SIGINT); a second SIGINT
exits at once."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from optuna.trial import TrialState

from hpo.records import trial_attrs
from tests.hpo.test_crash import (
    Workers,
    args_for,
    assert_study_consistent,
    checkpoint_epoch,
    retry_of,
    trials_of,
    wait_for,
    workers,  # noqa: F401 - fixture
    write_study,
)


def test_sigterm_mid_trial_requeues_and_next_run_resumes(tmp_path: Path, pg_url: str,
                                                         workers: Workers) -> None:  # noqa: F811
    path = write_study(tmp_path, name="sig", n_trials=2, epochs=4, sleep_s=0.5)
    out = tmp_path / "out"
    proc = workers.start(args_for(path, pg_url, out))
    wait_for(lambda: checkpoint_epoch(out, "sig", 0) >= 1, timeout=60,
             what="the first checkpoint of trial 0")
    proc.send_signal(signal.SIGTERM)
    assert workers.wait(proc, timeout=30) == 143  # 128 + SIGTERM, as a shell reports it
    log = proc.log_path.read_text()  # type: ignore[attr-defined]
    assert "SIGTERM received: stopping the running trial" in log
    assert "queued for retry; rerun the same command to resume" in log

    trials = trials_of(pg_url, "sig")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]  # none RUNNING
    assert trials[0].user_attrs["fail_reason"] == "interrupted (SIGTERM); retried later"
    assert trials[0].user_attrs["stopped_by"] == "SIGTERM"
    assert trials[0].user_attrs["preempted"]["count"] == 1
    assert retry_of(trials[1]) == 0 and trials[1].params == trials[0].params
    from hpo.status import main as status_main

    assert status_main(["--study", "sig", "--storage", pg_url]) == 0
    stopped_at = trials[0].user_attrs["epoch"]
    assert 1 <= stopped_at < 4
    # outputs were flushed before exiting: the export shows the interrupted trial
    exported = json.loads((out / "sig" / "all_trials.json").read_text())
    assert exported["counts"] == {"FAIL": 1, "WAITING": 1}

    again = workers.start(args_for(path, pg_url, out))
    assert workers.wait(again, timeout=90) == 0
    trials = trials_of(pg_url, "sig")
    assert_study_consistent(trials, target=2)
    assert trials[1].state == TrialState.COMPLETE
    assert trials[1].user_attrs["resumed_from"] == {"trial": 0, "epoch": stopped_at}
    log = again.log_path.read_text()  # type: ignore[attr-defined]
    # one line says where the retry continues; the final table calls the stop what it was
    assert log.count("resumes") == 1
    assert f"trial 1 resumes trial 0 at epoch {stopped_at + 1}, step 1" in log
    assert "1 preempted" in log and "1 failed" not in log
    assert [h["epoch"] for h in trial_attrs(trials[1])["history"]] == [1, 2, 3, 4]
    # the retry was not stopped; the preemption stays counted along the chain
    assert trials[1].user_attrs["stopped_by"] is None
    assert trials[1].user_attrs["preempted"]["count"] == 1


def test_status_shows_preempted_apart_from_failed(tmp_path: Path, pg_url: str,
                                                  workers: Workers,  # noqa: F811
                                                  capsys) -> None:
    from hpo.status import main as status_main

    path = write_study(tmp_path, name="pre", n_trials=2, epochs=4, sleep_s=0.5)
    out = tmp_path / "out"
    proc = workers.start(args_for(path, pg_url, out))
    wait_for(lambda: checkpoint_epoch(out, "pre", 0) >= 1, timeout=60, what="a checkpoint")
    proc.send_signal(signal.SIGTERM)
    assert workers.wait(proc, timeout=30) == 143
    capsys.readouterr()
    assert status_main(["--study", "pre", "--storage", pg_url]) == 0
    text = capsys.readouterr().out
    assert "0 failed, 1 preempted, 0 running, 1 waiting" in text
    assert "failed: trial" not in text  # the failures list holds real failures only


def test_a_trial_that_misses_the_grace_period_leaves_on_time_and_is_not_charged(
        tmp_path: Path, pg_url: str, workers: Workers) -> None:  # noqa: F811
    # one epoch takes 15 s: the trial would only stop at its end, over 10 s after the signal
    path = write_study(tmp_path, name="grace", n_trials=1, epochs=2, sleep_s=15,
                       extra="[run]\npreempt_grace_s = 1\n")
    path.write_text(path.read_text().replace("max_retry = 2", "max_retry = 0"))
    out = tmp_path / "out"
    proc = workers.start(args_for(path, pg_url, out))
    wait_for(lambda: checkpoint_epoch(out, "grace", 0) >= 1, timeout=90,
             what="the first checkpoint")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert workers.wait(proc, timeout=20) == 143
    assert time.monotonic() - sent < 10
    left = trials_of(pg_url, "grace")
    assert [t.state for t in left] == [TrialState.RUNNING]  # for the heartbeat to reclaim
    assert left[0].user_attrs["preempted"]["count"] == 1
    # max_retry = 0 would leave a crashed trial alone; a preempted one is retried
    time.sleep(4)  # grace period 3 s
    again = workers.start([*args_for(path, pg_url, out)],
                          env={"TOY_STOP_AFTER_EPOCH": "-1"})
    assert workers.wait(again, timeout=120) == 0, again.log_path.read_text()[-2000:]
    trials = trials_of(pg_url, "grace")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert retry_of(trials[1]) == 0


def test_second_sigint_exits_at_once(tmp_path: Path, workers: Workers) -> None:  # noqa: F811
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    # one epoch takes 20 s: the first SIGINT alone would wait for its end
    path = write_study(tmp_path, name="twice", n_trials=1, epochs=2, sleep_s=20)
    out = tmp_path / "out"
    proc = workers.start(args_for(path, url, out))
    wait_for(lambda: checkpoint_epoch(out, "twice", 0) >= 1, timeout=60,
             what="the first checkpoint")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None  # still finishing its epoch
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert workers.wait(proc, timeout=10) == 130
    assert time.monotonic() - sent < 5
    # left RUNNING on purpose: its heartbeat stops and the next worker fails and retries it
    assert [t.state for t in trials_of(url, "twice")] == [TrialState.RUNNING]


def test_sigterm_to_workers_parent_stops_every_worker(tmp_path: Path, pg_url: str,
                                                      workers: Workers) -> None:  # noqa: F811
    path = write_study(tmp_path, name="fleet", n_trials=6, epochs=4, sleep_s=0.5)
    out = tmp_path / "out"
    parent = workers.start([*args_for(path, pg_url, out), "--workers", "2"])
    wait_for(lambda: sum(checkpoint_epoch(out, "fleet", n) >= 1 for n in range(4)) >= 2,
             timeout=90, what="two trials running")
    os.kill(parent.pid, signal.SIGTERM)
    assert workers.wait(parent, timeout=30) == 143
    trials = trials_of(pg_url, "fleet")
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states, states
    interrupted = [t for t in trials if t.state == TrialState.FAIL
                   and t.user_attrs["fail_reason"] == "interrupted (SIGTERM); retried later"]
    assert len(interrupted) == 2
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(retry_of(t) for t in waiting) == sorted(t.number for t in interrupted)
