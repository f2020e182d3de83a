"""``python -m hpo.status``: states, progress, ETA, running epochs, zombies, best values."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo import status
from hpo.status import collect_status, estimate_eta, heartbeat_ages, main
from hpo.storage import open_storage

T0 = datetime(2026, 1, 5, 22, 0, 0)
DIST = {"lr": FloatDistribution(1e-3, 1.0, log=True)}
GRACE = 60.0


def _finished(number: int, state: TrialState, value: float | None, minutes: float,
              **attrs: object) -> FrozenTrial:
    return FrozenTrial(number=number, state=state, value=None,
                       values=None if value is None else [value],
                       datetime_start=T0, datetime_complete=T0 + timedelta(minutes=minutes),
                       params={"lr": 0.01 * (number + 1)}, distributions=DIST,
                       user_attrs=dict(attrs), system_attrs={}, intermediate_values={},
                       trial_id=number)


def _age_heartbeat(storage: optuna.storages.RDBStorage, trial_id: int, seconds: float) -> None:
    """Move a trial's last heartbeat ``seconds`` into the past, as a dead worker leaves it."""
    with storage.engine.begin() as conn:
        now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
        conn.execute(sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = :hb "
                                     "WHERE trial_id = :tid"),
                     {"hb": now.replace(tzinfo=None) - timedelta(seconds=seconds),
                      "tid": trial_id})


def make_study(url: str) -> tuple[optuna.Study, optuna.storages.RDBStorage, dict[str, int]]:
    """A study mid-run: 2 complete (60 s, 120 s), 1 pruned (90 s), 1 failed, 1 surplus,
    1 waiting, 2 running (one live at epoch 3 on worker A, one zombie); target 10."""
    storage = open_storage(url)
    study = optuna.create_study(study_name="night", storage=storage, direction="minimize")
    study.set_metric_names(["val_loss"])
    study.set_user_attr("n_trials_target", 10)
    study.set_user_attr("workload", "toy")
    study.set_user_attr("spec", {"fixed": {"epochs": 5}})
    study.add_trial(_finished(0, TrialState.COMPLETE, 0.5, 1))
    study.add_trial(_finished(1, TrialState.COMPLETE, 0.25, 2))
    study.add_trial(_finished(2, TrialState.PRUNED, None, 1.5, prune_reason="median rule"))
    study.add_trial(_finished(3, TrialState.FAIL, None, 0.5, fail_reason="OOM"))
    study.add_trial(_finished(4, TrialState.FAIL, None, 0.0, surplus=True))
    live = study.ask(DIST)
    live.set_user_attr("epoch", 3)
    live.set_user_attr("worker", "gpu1:4242")
    live.set_user_attr("history", [{"epoch": e, "val_loss": 1.0 / e, "sharpe": 0.1 * e}
                                   for e in (1, 2, 3)])
    zombie = study.ask(DIST)
    zombie.set_user_attr("worker", "gpu2:999")
    study.enqueue_trial({"lr": 0.1})
    rdb = storage
    for t in (live, zombie):
        rdb.record_heartbeat(t._trial_id)
    _age_heartbeat(rdb, zombie._trial_id, 3600)
    return study, rdb, {"live": live.number, "zombie": zombie.number,
                        "live_id": live._trial_id, "zombie_id": zombie._trial_id}


def test_eta_uses_mean_duration_running_progress_and_workers() -> None:
    assert estimate_eta(remaining=0, durations=[], running_elapsed=[], workers=0) == 0.0
    assert estimate_eta(remaining=3, durations=[], running_elapsed=[], workers=2) is None
    assert estimate_eta(remaining=3, durations=[60.0], running_elapsed=[], workers=0) is None
    # 4 trials of 90 s left, 2 workers, one running trial 30 s in, another past the mean
    assert estimate_eta(remaining=4, durations=[60.0, 120.0], running_elapsed=[30.0, 500.0],
                        workers=2) == pytest.approx((4 * 90 - 30 - 90) / 2)


def test_collect_status_on_every_backend(storage_url: str) -> None:
    study, storage, ids = make_study(storage_url)
    live = study.trials[ids["live"]]
    s = collect_status(study, storage, grace_period=GRACE, url=storage_url,
                       now=live.datetime_start + timedelta(seconds=30))
    assert s["counts"] == {"complete": 2, "pruned": 1, "failed": 1, "running": 2, "waiting": 1,
                           "surplus": 1, "preempted": 0, "interrupted": 0, "environment": 0}
    assert (s["target"], s["finished"], s["observed_trials"]) == (10, 3, 3)
    assert s["mean_trial_s"] == pytest.approx(90.0)
    # one live worker (the zombie's does not count); 7 trials of 90 s, 30 s of one done
    assert s["live_workers"] == 1
    assert s["eta_s"] == pytest.approx(7 * 90 - 30)
    by_number = {r["number"]: r for r in s["running"]}
    assert by_number[ids["live"]]["epoch"] == 3 and by_number[ids["live"]]["epochs"] == 5
    assert by_number[ids["live"]]["latest"] == {"val_loss": pytest.approx(1 / 3),
                                                "sharpe": pytest.approx(0.3)}
    assert by_number[ids["live"]]["heartbeat_age_s"] < GRACE
    assert by_number[ids["zombie"]]["heartbeat_age_s"] == pytest.approx(3600, abs=30)
    assert s["zombies"] == [ids["zombie"]]
    assert s["best_kind"] == "best_trial"
    assert s["best"] == [{"number": 1, "values": {"val_loss": 0.25}, "params": {"lr": 0.02}}]

    # Optuna's own stale-trial check agrees with ours on the same data
    checker = optuna.storages.RDBStorage(storage_url, heartbeat_interval=1,
                                         grace_period=int(GRACE))
    assert checker._get_stale_trial_ids(study._study_id) == [ids["zombie_id"]]
    checker.engine.dispose()


def test_no_heartbeat_row_is_not_a_zombie(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    storage = open_storage(url)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    assert heartbeat_ages(storage, study._study_id) == {}
    s = collect_status(study, storage, grace_period=GRACE)
    assert s["running"][0]["number"] == trial.number
    assert s["running"][0]["heartbeat_age_s"] is None and s["zombies"] == []
    # no target stored, nothing finished: no ETA, and the text says why
    assert s["target"] is None and s["eta_s"] is None
    text = status.render(s)
    assert "progress: 0 finished (no target stored)" in text
    assert "eta: ? (no finished trial yet)" in text
    assert "best: no complete trial yet" in text


def test_live_worker_heartbeat_and_epoch_are_seen(tmp_path: Path) -> None:
    """A real ``study.optimize`` with heartbeats: its trial is RUNNING, beating, not a zombie."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    storage = open_storage(url, heartbeat_interval=1, grace_period=3)
    study = optuna.create_study(study_name="live", storage=storage)
    release = threading.Event()

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("epoch", 2)
        release.wait(30)
        return 1.0

    worker = threading.Thread(target=study.optimize, args=(objective,), kwargs={"n_trials": 1})
    worker.start()
    try:
        seen = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            s = collect_status(study, storage, grace_period=6)
            if s["running"] and s["running"][0]["heartbeat_age_s"] is not None \
                    and s["running"][0]["epoch"] == 2:
                seen = s
                break
            time.sleep(0.2)
        assert seen is not None, "the running trial never showed a heartbeat and its epoch"
        assert seen["running"][0]["heartbeat_age_s"] < 3 and seen["zombies"] == []
        assert seen["live_workers"] == 1
    finally:
        release.set()
        worker.join(30)
    assert collect_status(study, storage, grace_period=3)["counts"]["complete"] == 1


@pytest.fixture
def night(tmp_path: Path) -> tuple[str, dict[str, int]]:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    _study, storage, ids = make_study(url)
    storage.engine.dispose()
    return url, ids


def test_cli_text(night: tuple[str, dict[str, int]], capsys: pytest.CaptureFixture) -> None:
    url, ids = night
    assert main(["--study", "night", "--storage", url, "--grace-period", "60"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"study night (toy) on {url}"
    assert out[1] == "objectives: val_loss (minimize)"
    assert out[2] == "progress: 3/10 finished (30%) [######..............]"
    assert out[3] == "trials: 2 complete, 1 pruned, 1 failed, 2 running, 1 waiting (1 surplus)"
    assert out[4].startswith("eta: ") and "mean trial 1:30 over 3 trials, 1 live worker(s)" \
        in out[4]
    assert out[5] == "running:"
    assert out[6].split() == ["trial", "epoch", "worker", "elapsed", "heartbeat", "latest"]
    live_row = next(line for line in out if line.split()[:1] == [str(ids["live"])])
    assert live_row.split()[1:3] == ["3/5", "gpu1:4242"]
    assert live_row.endswith("val_loss=0.3333 sharpe=0.3")
    zombie_row = next(line for line in out if line.split()[:1] == [str(ids["zombie"])])
    assert "ZOMBIE" in zombie_row
    assert f"zombies: trial(s) {ids['zombie']} have sent no heartbeat for more than 60 s" in \
        "\n".join(out)
    assert out[-3] == "best trial:"
    assert out[-1].split() == ["1", "0.25", "0.02"]


def test_cli_json_and_trial_history(night: tuple[str, dict[str, int]],
                                    capsys: pytest.CaptureFixture) -> None:
    url, ids = night
    assert main(["--study", "night", "--storage", url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["zombies"] == [ids["zombie"]] and data["grace_period_s"] == 120
    assert data["counts"]["waiting"] == 1 and data["metric_names"] == ["val_loss"]

    assert main(["--study", "night", "--storage", url, "--trial", str(ids["live"])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"study night trial {ids['live']} (RUNNING)"
    assert [line.split() for line in out[1:]] == [
        ["epoch", "val_loss", "sharpe"], ["1", "1", "0.1"], ["2", "0.5", "0.2"],
        ["3", "0.3333", "0.3"]]
    assert main(["--study", "night", "--storage", url, "--trial", "1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record == {"study": "night", "number": 1, "state": "COMPLETE",
                      "values": {"val_loss": 0.25}, "params": {"lr": 0.02}, "history": []}


def test_watch_redraws_until_ctrl_c(night: tuple[str, dict[str, int]],
                                    capsys: pytest.CaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = night
    sleeps: list[float] = []

    def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(status, "_sleep", fake_sleep)
    assert main(["--study", "night", "--storage", url, "--watch", "2", "--json"]) == 130
    lines = capsys.readouterr().out.splitlines()
    assert sleeps == [2.0, 2.0, 2.0]
    assert len(lines) == 3 and all(json.loads(x)["finished"] == 3 for x in lines)

    sleeps.clear()
    assert main(["--study", "night", "--storage", url, "--watch"]) == 130
    out = capsys.readouterr().out
    assert sleeps == [10.0, 10.0, 10.0] and out.count("progress: 3/10 finished") == 3


def test_unknown_study_lists_existing(night: tuple[str, dict[str, int]],
                                      capsys: pytest.CaptureFixture) -> None:
    url, _ = night
    assert main(["--study", "nope", "--storage", url]) == 2
    assert capsys.readouterr().err == (
        f"error: unknown study 'nope' in {url}; studies there: night\n")


def test_unreachable_storage_one_line_no_password(capsys: pytest.CaptureFixture) -> None:
    url = "postgresql+psycopg2://alice:hunter2@127.0.0.1:1/nowhere"
    assert main(["--study", "night", "--storage", url]) == 2
    assert capsys.readouterr().err == (
        "error: cannot connect to storage postgresql+psycopg2://alice:***@127.0.0.1:1/nowhere: "
        'connection to server at "127.0.0.1", port 1 failed: Connection refused; check the '
        "host, port, database name and credentials\n")


def test_missing_default_database_is_not_created(tmp_path: Path, capsys,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["--study", "night", "--output", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: no study database at {(out / 'hpo.db').resolve()}; run `python -m hpo.run "
        "--study NAME` first, or pass --storage (or set $HPO_STORAGE)\n")
    assert not (out / "hpo.db").exists()


@pytest.mark.parametrize("flags, expected", [
    (["--watch", "0"], "error: --watch must be > 0 seconds, got 0\n"),
    (["--grace-period", "-1"], "error: --grace-period must be > 0 seconds, got -1\n"),
    (["--trial", "99"], "error: --trial 99: study 'night' has trials 0..7\n"),
])
def test_bad_flags(night: tuple[str, dict[str, int]], capsys: pytest.CaptureFixture,
                   flags: list[str], expected: str) -> None:
    url, _ = night
    assert main(["--study", "night", "--storage", url, *flags]) == 2
    assert capsys.readouterr().err == expected


def test_killed_worker_leaves_a_zombie(tmp_path: Path) -> None:
    """End to end: a real worker is killed with -9 mid-trial; its trial stays RUNNING, its
    heartbeat ages past the grace period and status calls it a zombie with no live worker."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.hpo.test_config import TOY

    text = TOY.replace('description = "toy"', 'name = "killed"\ndescription = "toy"') \
              .replace("epochs = 2", "epochs = 50\nsleep_s = 0.5") \
        + "[storage]\nheartbeat_interval = 1\ngrace_period = 6\n"
    path = tmp_path / "killed.toml"
    path.write_text(text)
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "hpo.run", "--study", str(path), "--storage",
                             url, "--output", str(tmp_path / "out")], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        running = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and running is None:
            time.sleep(0.5)
            try:
                storage = open_storage(url)
                study = optuna.load_study(study_name="killed", storage=storage)
            except Exception:  # the worker has not created the study yet
                continue
            s = collect_status(study, storage, grace_period=6)
            if s["running"] and (s["running"][0]["epoch"] or 0) >= 1 \
                    and s["running"][0]["heartbeat_age_s"] is not None:
                running = s
        assert running is not None, "the worker never reported an epoch with a heartbeat"
        assert running["zombies"] == [] and running["live_workers"] == 1
        number = running["running"][0]["number"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    # A grace period of 6 s with 1 s heartbeats leaves room for a busy CI machine.
    time.sleep(7.5)
    s = collect_status(study, storage, grace_period=6)
    assert [r["number"] for r in s["running"]] == [number]
    assert s["zombies"] == [number] and s["live_workers"] == 0
    assert s["running"][0]["heartbeat_age_s"] > 6
    assert "eta: ? (no live worker;" in status.render(s)


@pytest.mark.parametrize("module", ["hpo.status", "hpo.export", "hpo.dashboard"])
def test_every_option_is_documented_with_an_example(module: str) -> None:
    import importlib

    parser = importlib.import_module(module).build_parser()
    assert parser.prog == f"python -m {module}"
    assert f"Example: python -m {module} --study " in parser.description
    for action in parser._actions:
        assert action.help, f"{module}: {action.option_strings} has no help text"
