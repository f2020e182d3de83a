"""Crash safety on the real storage: a killed worker, a restarted database, a resumed trial.

Workers run as subprocesses (``python -m hpo.run``), exactly as a user starts them; the study
file sets a 1 s heartbeat and a 3 s grace period so a dead worker's trial is reclaimed quickly.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from hpo.records import trial_attrs
from hpo.run import main
from tests.conftest import REPO
from tests.hpo.toy_workload import SPACE_TOML

STUDY = """
name = "{name}"
description = "crash safety"
workload = "tests.hpo.toy_workload"
n_trials = {n_trials}
[[objectives]]
metric = "loss"
direction = "minimize"
[sampler]
name = "tpe"
seed = 1
[trainer]
epochs = {epochs}
sleep_s = {sleep_s}
[storage]
heartbeat_interval = 1
grace_period = 3
max_retry = 2
""" + SPACE_TOML + """{extra}
"""

FIXED = '''
[[enqueue]]
name = "fixed"
params = { lr = 0.1, width = 2, optimizer = "momentum" }
'''


def write_study(tmp_path: Path, *, name: str = "crash", n_trials: int = 2, epochs: int = 5,
                sleep_s: float = 0.0, extra: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(STUDY.format(name=name, n_trials=n_trials, epochs=epochs, sleep_s=sleep_s,
                                 extra=extra))
    return path


def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def epochs_done(out: Path, study: str, number: int) -> int:
    """Epochs the trial has reported (its history file is written atomically per epoch)."""
    path = out / study / f"trial_{number}" / "history.json"
    try:
        return len(json.loads(path.read_text()))
    except (OSError, ValueError):
        return 0


def checkpoint_epoch(out: Path, study: str, number: int) -> int:
    """Epochs completed according to the trial's checkpoint (0 when there is none yet)."""
    import torch

    path = out / study / f"trial_{number}" / "checkpoint.pt"
    try:
        return int(torch.load(path, weights_only=False)["epoch"])
    except (OSError, EOFError, RuntimeError, KeyError):
        return 0


class Workers:
    """Starts ``python -m hpo.run`` subprocesses and kills any still alive at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], *, env: dict[str, str] | None = None,
              log_name: str = "worker") -> subprocess.Popen:
        log = open(self.tmp_path / f"{log_name}_{len(self.procs)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpo.run", *args], cwd=REPO, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
        proc.log_path = Path(log.name)  # type: ignore[attr-defined]
        log.close()
        self.procs.append(proc)
        return proc

    def wait(self, proc: subprocess.Popen, timeout: float) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker did not exit within {timeout} s:\n"
                                 + proc.log_path.read_text()[-3000:]) from None  # type: ignore

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    w = Workers(tmp_path)
    try:
        yield w
    finally:
        w.close()


def trials_of(url: str, name: str) -> list[FrozenTrial]:
    storage = optuna.storages.RDBStorage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    finally:
        storage.engine.dispose()


def retry_of(trial: FrozenTrial) -> int | None:
    history = trial.system_attrs.get("retry_history") or []
    return history[-1] if history else None


def assert_study_consistent(trials: list[FrozenTrial], target: int) -> None:
    """Target reached exactly, nothing left running or queued, every failed trial retried at
    most once, no parameter set finished twice."""
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == target, states
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states, states
    retried = [retry_of(t) for t in trials if retry_of(t) is not None]
    assert len(retried) == len(set(retried)), f"a trial was retried twice: {retried}"
    by_number = {t.number: t for t in trials}
    for number in retried:
        assert by_number[number].state == TrialState.FAIL
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == len(params), f"a parameter set finished twice: {params}"


def args_for(path: Path, url: str, out: Path) -> list[str]:
    return ["--study", str(path), "--storage", url, "--output", str(out)]


# -- resume gives the same result -----------------------------------------------------------
def test_interrupted_then_resumed_trial_matches_uninterrupted(
        tmp_path: Path, storage_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_study(tmp_path, name="resume", n_trials=1, epochs=5, extra=FIXED)
    ref_url = f"sqlite:///{tmp_path / 'reference.db'}"
    assert main(args_for(path, ref_url, tmp_path / "ref")) == 0
    reference = trials_of(ref_url, "resume")[0]

    out = tmp_path / "out"
    monkeypatch.setenv("TOY_STOP_AFTER_EPOCH", "2")  # stops like a SIGTERM after epoch 2
    assert main(args_for(path, storage_url, out)) == 130
    trials = trials_of(storage_url, "resume")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].user_attrs["fail_reason"].startswith("interrupted")

    monkeypatch.delenv("TOY_STOP_AFTER_EPOCH")
    assert main(args_for(path, storage_url, out)) == 0
    trials = trials_of(storage_url, "resume")
    resumed = trials[1]
    assert resumed.state == TrialState.COMPLETE and retry_of(resumed) == 0
    assert resumed.params == reference.params == {"lr": 0.1, "width": 2,
                                                  "optimizer": "momentum"}
    assert resumed.user_attrs["resumed_from"] == {"trial": 0, "epoch": 2}
    # the same seed as the interrupted attempt, and bit-identical results
    assert resumed.user_attrs["seed"] == trials[0].user_attrs["seed"]
    assert resumed.values == reference.values
    for metric in ("loss", "score", "x"):
        assert resumed.user_attrs[metric] == reference.user_attrs[metric]
    assert [h["epoch"] for h in trial_attrs(resumed)["history"]] == [1, 2, 3, 4, 5]
    assert trial_attrs(resumed)["history"] == trial_attrs(reference)["history"]


def test_twice_interrupted_trial_resumes_from_the_newest_predecessor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_study(tmp_path, name="chain", n_trials=1, epochs=5, extra=FIXED)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    out = tmp_path / "out"
    monkeypatch.setenv("TOY_STOP_AFTER_EPOCH", "1")
    assert main(args_for(path, url, out)) == 130  # trial 0 stops after epoch 1
    monkeypatch.setenv("TOY_STOP_AFTER_EPOCH", "3")
    assert main(args_for(path, url, out)) == 130  # its retry 1 resumes, stops after epoch 3
    monkeypatch.delenv("TOY_STOP_AFTER_EPOCH")
    assert main(args_for(path, url, out)) == 0
    trials = trials_of(url, "chain")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL,
                                         TrialState.COMPLETE]
    assert trials[1].user_attrs["resumed_from"] == {"trial": 0, "epoch": 1}
    assert trials[2].system_attrs["retry_history"] == [0, 1]
    assert trials[2].user_attrs["resumed_from"] == {"trial": 1, "epoch": 3}
    assert trials[2].user_attrs["retry_of"] == 1


def test_a_damaged_checkpoint_is_passed_over_and_the_trial_still_matches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The interrupted trial's newest checkpoint is cut in half before the restart: the retry
    resumes from the previous one (epoch 1 instead of 2), says so, and, with its fixed seed,
    still ends with the uninterrupted run's values."""
    path = write_study(tmp_path, name="damaged", n_trials=1, epochs=5, extra=FIXED)
    ref_url = f"sqlite:///{tmp_path / 'reference.db'}"
    assert main(args_for(path, ref_url, tmp_path / "ref")) == 0
    reference = trials_of(ref_url, "damaged")[0]
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    out = tmp_path / "out"
    monkeypatch.setenv("TOY_STOP_AFTER_EPOCH", "2")
    assert main(args_for(path, url, out)) == 130
    checkpoint = out / "damaged" / "trial_0" / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    monkeypatch.delenv("TOY_STOP_AFTER_EPOCH")
    assert main(args_for(path, url, out)) == 0
    resumed = trials_of(url, "damaged")[1]
    assert resumed.state == TrialState.COMPLETE
    assert resumed.user_attrs["resumed_from"] == {"trial": 0, "epoch": 1}
    [damaged] = resumed.user_attrs["checkpoint_damaged"]
    assert damaged["file"].endswith("trial_0/checkpoint.pt")
    assert resumed.values == reference.values


# -- zombies of dead workers ----------------------------------------------------------------
def make_zombie(path: Path, url: str) -> None:
    """A RUNNING trial with params and one heartbeat, whose worker is gone."""
    import warnings

    from hpo.config import load_study_spec
    from hpo.objective import suggest
    from hpo.study import open_study

    spec = load_study_spec(str(path))
    study = open_study(spec, url, force=False, target=1, quiet=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ask() outside optimize() with heartbeats
        trial = study.ask()
    for param in spec.search_space:
        suggest(trial, param)
    study._storage.record_heartbeat(trial._trial_id)
    study._storage.remove_session()


@pytest.mark.parametrize("stale_at_start", [True, False])
def test_dead_workers_trial_is_reclaimed_by_a_new_worker(tmp_path: Path, pg_url: str,
                                                         stale_at_start: bool) -> None:
    """Stale at start: failed and retried before the first trial. Not yet stale: the worker
    does not leave (its only trial "runs elsewhere") but waits and reclaims it."""
    path = write_study(tmp_path, name="zombie", n_trials=1, epochs=2)
    make_zombie(path, pg_url)
    if stale_at_start:
        time.sleep(4)  # grace period 3 s
    started = time.monotonic()
    assert main([*args_for(path, pg_url, tmp_path / "out"), "--n-trials", "1"]) == 0
    trials = trials_of(pg_url, "zombie")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert retry_of(trials[1]) == 0 and trials[1].params == trials[0].params
    if not stale_at_start:
        assert time.monotonic() - started >= 2  # it waited for the grace period


# -- kill -9 --------------------------------------------------------------------------------
def test_kill_9_mid_epoch_is_retried_and_resumed(tmp_path: Path, pg_url: str,
                                                 workers: Workers) -> None:
    path = write_study(tmp_path, name="crash", n_trials=2, epochs=4, sleep_s=0.5)
    out = tmp_path / "out"
    first = workers.start(args_for(path, pg_url, out))
    # epoch 2 is checkpointed, the trial is inside its third epoch
    wait_for(lambda: checkpoint_epoch(out, "crash", 0) >= 2, timeout=60,
             what="the checkpoint of epoch 2 of trial 0")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    assert checkpoint_epoch(out, "crash", 0) == 2
    killed = trials_of(pg_url, "crash")
    assert [t.state for t in killed] == [TrialState.RUNNING]  # a zombie until it goes stale

    second = workers.start(args_for(path, pg_url, out))
    assert workers.wait(second, timeout=120) == 0, second.log_path.read_text()[-3000:]

    trials = trials_of(pg_url, "crash")
    assert_study_consistent(trials, target=2)
    assert trials[0].state == TrialState.FAIL
    retry = next(t for t in trials if retry_of(t) == 0)
    assert retry.state == TrialState.COMPLETE
    assert retry.params == trials[0].params
    assert retry.user_attrs["resumed_from"] == {"trial": 0, "epoch": 2}
    assert [h["epoch"] for h in trial_attrs(retry)["history"]] == [1, 2, 3, 4]
    # the study-wide export agrees with storage after the crash
    exported = json.loads((out / "crash" / "all_trials.json").read_text())
    assert exported["counts"] == {"FAIL": 1, "COMPLETE": 2}


# -- PostgreSQL restart ---------------------------------------------------------------------
def _pg_bindir() -> Path | None:
    candidates = []
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        candidates.append(subprocess.run(["pg_config", "--bindir"], capture_output=True,
                                         text=True, check=True).stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayCluster:
    """A private PostgreSQL cluster in a temp dir, run as the ``postgres`` user."""

    def __init__(self, bindir: Path) -> None:
        import pwd

        self.bindir = bindir
        self.user = pwd.getpwnam("postgres")
        self.dir = Path(tempfile.mkdtemp(prefix="hpo_pg_"))
        os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.data = self.dir / "data"
        self.port = _free_port()

    def _as_postgres(self, *cmd: str, timeout: float = 60) -> None:
        prefix = [] if os.geteuid() == self.user.pw_uid else ["runuser", "-u", "postgres", "--"]
        proc = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stdout}{proc.stderr}")

    def pg_ctl(self, action: str, *extra: str) -> None:
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-l",
                          str(self.dir / "server.log"), "-o",
                          f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1",
                          action, *extra)

    def start(self) -> str:
        self._as_postgres(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust",
                          "-U", "postgres", "--no-sync", timeout=120)
        self.pg_ctl("start")
        import sqlalchemy

        admin = sqlalchemy.create_engine(
            f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres",
            isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text("CREATE DATABASE hpo"))
        admin.dispose()
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/hpo"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def throwaway_pg() -> Iterator[ThrowawayCluster]:
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no 'postgres' system user to run a throwaway cluster as")
    if os.geteuid() != 0 and os.geteuid() != pwd.getpwnam("postgres").pw_uid:
        pytest.skip("a throwaway cluster needs root (runuser) or the postgres user")
    cluster = ThrowawayCluster(bindir)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_postgres_restart_mid_study_completes(tmp_path: Path, throwaway_pg: ThrowawayCluster,
                                              workers: Workers) -> None:
    url = throwaway_pg.start()
    path = write_study(tmp_path, name="restart", n_trials=3, epochs=3, sleep_s=0.4)
    out = tmp_path / "out"
    proc = workers.start(args_for(path, url, out))
    wait_for(lambda: epochs_done(out, "restart", 1) >= 1, timeout=90, what="trial 1 running")
    throwaway_pg.pg_ctl("restart", "-m", "fast")
    assert workers.wait(proc, timeout=120) == 0, proc.log_path.read_text()[-3000:]
    trials = trials_of(url, "restart")
    assert_study_consistent(trials, target=3)
    # every finished trial ran all its epochs (resumed ones included)
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert [h["epoch"] for h in trial_attrs(t)["history"]] == [1, 2, 3]


def test_postgres_engine_is_pinged_and_pooled_small(pg_url: str) -> None:
    from hpo.storage import PG_MAX_OVERFLOW, PG_POOL_SIZE, open_storage

    storage = open_storage(pg_url, heartbeat_interval=1, grace_period=3, max_retry=3)
    try:
        pool = storage.engine.pool
        assert pool._pre_ping is True
        assert (pool.size(), pool._max_overflow) == (PG_POOL_SIZE, PG_MAX_OVERFLOW) == (2, 2)
        assert storage.heartbeat_stale_trial_callback.max_retry == 3
    finally:
        storage.engine.dispose()


# -- user attrs and params are Optuna's writes ---------------------------------------------
def test_user_attrs_reach_the_storage_at_once_as_in_optuna(storage_url: str) -> None:
    """Another process sees an attr as soon as it is set (the dashboard shows a running
    trial's epochs live), and the final state keeps every attr."""
    import warnings

    from hpo.storage import open_storage

    storage = open_storage(storage_url, heartbeat_interval=1, grace_period=3)
    study = optuna.create_study(study_name="attrs", storage=storage)
    other = optuna.storages.RDBStorage(storage_url)  # another process's view
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = study.ask()
        trial.set_user_attr("epoch", 1)
        assert other.get_trial(trial._trial_id).user_attrs == {"epoch": 1}
        trial.set_user_attr("epoch", 2)
        trial.set_user_attr("loss", 0.5)
        study.tell(trial, 0.5)
        finished = other.get_trial(trial._trial_id)
        assert finished.state == TrialState.COMPLETE
        assert finished.user_attrs == {"epoch": 2, "loss": 0.5}
    finally:
        other.engine.dispose()
        study._storage.remove_session()


def test_other_workers_see_a_trials_params_before_it_trains(storage_url: str, tmp_path: Path,
                                                            monkeypatch) -> None:  # noqa: ANN001
    """The params (which other workers' samplers treat as running, constant liar) and the
    setup attrs are in the storage by the time training starts."""
    from dataclasses import replace

    from tests.hpo import toy_workload

    seen: list[tuple[dict, dict]] = []

    def look_then_train(config, ctx):  # noqa: ANN001, ANN202
        other = optuna.storages.RDBStorage(storage_url)
        try:
            stored = other.get_trial(ctx.trial._trial_id)
        finally:
            other.engine.dispose()
        seen.append((stored.params, stored.user_attrs))
        return toy_workload.train(config, ctx)

    monkeypatch.setattr(toy_workload, "WORKLOAD",
                        replace(toy_workload.WORKLOAD, train=look_then_train))
    path = write_study(tmp_path, name="setup", n_trials=2, epochs=1)
    assert main([*args_for(path, storage_url, tmp_path / "out")]) == 0
    trials = trials_of(storage_url, "setup")
    assert len(seen) == len(trials) == 2
    for (params, attrs), trial in zip(seen, trials, strict=True):
        assert params == trial.params and set(params) == {"lr", "width", "optimizer"}
        assert {"output_dir", "worker", "seed"} <= set(attrs)


def test_retries_after_preemptions_are_not_charged_to_max_retry() -> None:
    """The stale-trial callback counts crashes only: retry_history less the preemptions."""
    from hpo.storage import CrashRetryCallback

    study = optuna.create_study()
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(trial, state=TrialState.FAIL)
    failed = study.trials[0]

    def with_history(n: int, preempted: int) -> FrozenTrial:
        import copy

        trial = copy.deepcopy(failed)
        trial.system_attrs["retry_history"] = list(range(n))
        trial.user_attrs["preempted"] = {"count": preempted, "times": []}
        return trial

    callback = CrashRetryCallback(max_retry=1)
    callback(study, with_history(0, 0))  # a first crash: retried
    callback(study, with_history(1, 0))  # a second crash: over max_retry, not retried
    callback(study, with_history(3, 3))  # three preemptions then a crash: retried
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert [len(t.system_attrs["retry_history"]) for t in waiting] == [1, 4]
