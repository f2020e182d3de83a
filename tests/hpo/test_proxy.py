"""``python -m hpo.proxy`` and ``--storage grpc://HOST:PORT``: a study through Optuna's gRPC
storage proxy reaches its target, and a killed worker's trial is failed, retried and resumed
through the proxy's heartbeats, as on PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.conftest import REPO
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

pytest.importorskip("grpc", reason="the gRPC proxy needs grpcio")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    def __init__(self, db_url: str, log: Path) -> None:
        self.port = _free_port()
        self.url = f"grpc://127.0.0.1:{self.port}"
        with open(log, "w") as out:  # noqa: SIM117
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hpo.proxy", "--storage", db_url, "--port",
                 str(self.port)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        self.log = log
        from hpo.storage import open_storage

        open_storage(self.url).close()  # waits until it answers

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=20)


@pytest.fixture
def proxy(tmp_path: Path, pg_url: str) -> Iterator[Proxy]:
    p = Proxy(pg_url, tmp_path / "proxy.log")
    try:
        yield p
    finally:
        if p.proc.poll() is None:
            os.killpg(p.proc.pid, signal.SIGKILL)
            p.proc.wait(timeout=10)


def test_a_study_through_the_proxy_reaches_its_target(tmp_path: Path, pg_url: str,
                                                       proxy: Proxy,
                                                       workers: Workers) -> None:  # noqa: F811
    path = write_study(tmp_path, name="proxied", n_trials=4, epochs=2, sleep_s=0.2)
    out = tmp_path / "out"
    proc = workers.start([*args_for(path, proxy.url, out), "--workers", "2"])
    assert workers.wait(proc, timeout=120) == 0, proc.log_path.read_text()[-3000:]
    # what the workers wrote through the proxy is in the database behind it
    trials = trials_of(pg_url, "proxied")
    assert_study_consistent(trials, target=4)
    assert all(isinstance(t.system_attrs.get("hpo:heartbeat"), float) for t in trials)
    assert proxy.stop() == 143
    assert "storage proxy stopped (SIGTERM)" in proxy.log.read_text()


def test_a_killed_workers_trial_is_retried_through_the_proxy(tmp_path: Path, pg_url: str,
                                                              proxy: Proxy,
                                                              workers: Workers) -> None:  # noqa: F811
    path = write_study(tmp_path, name="killed", n_trials=2, epochs=4, sleep_s=0.5)
    out = tmp_path / "out"
    first = workers.start(args_for(path, proxy.url, out))
    wait_for(lambda: checkpoint_epoch(out, "killed", 0) >= 2, timeout=60,
             what="the checkpoint of epoch 2 of trial 0")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    assert [t.state for t in trials_of(pg_url, "killed")] == [TrialState.RUNNING]
    # hpo.status through the proxy sees its heartbeat (the attr: no heartbeat table there)
    from hpo.loading import open_existing_study
    from hpo.status import collect_status

    study, storage, _ = open_existing_study("killed", storage=proxy.url, output=out)
    running = collect_status(study, storage, grace_period=3)["running"]
    assert [r["number"] for r in running] == [0] and running[0]["heartbeat_age_s"] < 30
    storage.close()

    second = workers.start(args_for(path, proxy.url, out))
    assert workers.wait(second, timeout=120) == 0, second.log_path.read_text()[-3000:]
    trials = trials_of(pg_url, "killed")
    assert_study_consistent(trials, target=2)
    retry = next(t for t in trials if retry_of(t) == 0)
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_from"] == {"trial": 0, "epoch": 2}


def test_no_proxy_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hpo.status import main as status_main

    port = _free_port()
    assert status_main(["--study", "x", "--storage", f"grpc://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no storage proxy answers at grpc://127.0.0.1:")
    assert "\n" not in err
    assert status_main(["--study", "x", "--storage", "grpc://nohost"]) == 2
    assert "must look like grpc://HOST:PORT" in capsys.readouterr().err


def test_plain_optuna_clients_use_the_proxy_too(tmp_path: Path, pg_url: str,
                                                proxy: Proxy) -> None:
    import optuna

    client = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=proxy.port)
    study = optuna.create_study(study_name="plain", storage=client)
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)
    client.close()
    trials = trials_of(pg_url, "plain")  # straight from the database behind the proxy
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
