"""Several workers on one study: exactly the target, no duplicates, flags that reach them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from optuna.trial import TrialState

import hpo.run
from hpo.run import main
from hpo.study import sampler_seed
from tests.hpo.test_crash import (
    Workers,
    args_for,
    assert_study_consistent,
    trials_of,
    wait_for,
    workers,  # noqa: F401 - fixture
    write_study,
)


def test_four_workers_finish_exactly_the_target(tmp_path: Path, pg_url: str,
                                                workers: Workers) -> None:  # noqa: F811
    path = write_study(tmp_path, name="four", n_trials=12, epochs=1, sleep_s=0.3)
    proc = workers.start([*args_for(path, pg_url, tmp_path / "out"), "--workers", "4"])
    assert workers.wait(proc, timeout=150) == 0, proc.log_path.read_text()[-3000:]
    trials = trials_of(pg_url, "four")
    assert_study_consistent(trials, target=12)
    # surplus trials (a worker that lost the race for the last one) are marked, never counted
    assert all(t.user_attrs.get("surplus") for t in trials if t.state == TrialState.FAIL)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len({t.user_attrs["worker"] for t in complete}) == 4  # every worker took part
    assert "study four: 12/12 finished (12 complete" in proc.log_path.read_text()


def test_two_hosts_running_the_same_command_share_the_target(
        tmp_path: Path, pg_url: str, workers: Workers) -> None:  # noqa: F811
    path = write_study(tmp_path, name="hosts", n_trials=8, epochs=2, sleep_s=0.3)
    command = [*args_for(path, pg_url, tmp_path / "out"), "--workers", "2"]
    first = workers.start(command)
    wait_for(lambda: (tmp_path / "out" / "hosts" / "trial_0").exists(), timeout=60,
             what="the first host's first trial")
    second = workers.start(command)
    assert workers.wait(first, timeout=150) == 0, first.log_path.read_text()[-3000:]
    assert workers.wait(second, timeout=150) == 0, second.log_path.read_text()[-3000:]
    trials = trials_of(pg_url, "hosts")
    assert_study_consistent(trials, target=8)


class FakePopen:
    """Records how a worker would be started; it "exits 0" at once."""

    started: list[FakePopen] = []

    def __init__(self, cmd: list[str], *, env: dict[str, str], **kwargs: object) -> None:
        self.cmd, self.env, self.kwargs = cmd, env, kwargs
        self.pid, self.returncode = 1000 + len(self.started), 0
        FakePopen.started.append(self)

    def poll(self) -> int:
        return 0


@pytest.mark.parametrize("visible, expected", [(None, ["0", "1"]), ("3,5", ["3", "5"])])
def test_workers_auto_pins_one_visible_gpu_per_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, visible: str | None,
        expected: list[str]) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(hpo.run, "_visible_gpus", lambda: 2)
    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    FakePopen.started = []
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    path = write_study(tmp_path, name="gpus", n_trials=2)
    assert main([*args_for(path, url, tmp_path / "out"), "--workers", "auto",
                 "--heartbeat-interval", "2", "--grace-period", "9", "--max-retry", "4"]) == 0
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in FakePopen.started] == expected
    for i, p in enumerate(FakePopen.started):
        assert p.cmd[p.cmd.index("--worker-index") + 1] == str(i)
        # the URL travels in the environment (a password would show in `ps` otherwise)
        assert p.env["HPO_STORAGE"] == url and url not in p.cmd
        assert p.kwargs["start_new_session"] is True
        # the worker receives the parent's request, not options rebuilt as argv
        request = hpo.run.request_from_json(p.env[hpo.run.WORKER_REQUEST_ENV])
        assert (request.heartbeat_interval, request.grace_period, request.max_retry,
                request.worker_index, request.workers, request.storage) == (2, 9, 4, i, "1",
                                                                              None)
        assert request.study == str(path) and request.output == tmp_path / "out"
        assert "--heartbeat-interval" not in p.cmd
    assert len(trials_of(url, "gpus")) == 0  # the parent only created the study


def test_storage_flags_override_the_study_file(tmp_path: Path) -> None:
    from hpo.config import load_study_spec
    from hpo.study import open_study

    path = write_study(tmp_path, name="flags")
    spec = hpo.run.apply_storage_overrides(load_study_spec(str(path)), {
        "heartbeat_interval": 2, "grace_period": 7, "max_retry": 5})
    assert (spec.storage.heartbeat_interval, spec.storage.grace_period,
            spec.storage.max_retry) == (2, 7, 5)
    study = open_study(spec, f"sqlite:///{tmp_path / 'db.sqlite'}", force=False, target=1)
    storage = study._storage._backend
    assert storage.heartbeat_interval == 2 and storage.grace_period == 7
    assert storage.heartbeat_stale_trial_callback.max_retry == 5


@pytest.mark.parametrize("flags, message", [
    (["--grace-period", "1"], "error: --grace-period (1 s) must be longer than the "
                              "heartbeat interval (1 s)"),
    (["--heartbeat-interval", "0"], "error: --heartbeat-interval must be >= 1 second, got 0"),
    (["--max-retry", "-1"], "error: --max-retry must be >= 0, got -1"),
])
def test_bad_storage_flags_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture,
                                               flags: list[str], message: str) -> None:
    path = write_study(tmp_path, name="bad")
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert main([*args_for(path, url, tmp_path / "out"), *flags]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(message)


def test_sampler_seeds_differ_per_worker_and_stored_trials_and_never_collide() -> None:
    assert sampler_seed(0, n_stored=0, worker_index=0) == sampler_seed(0, n_stored=0,
                                                                        worker_index=0)
    parts = [(seed, n, w) for seed in range(12) for n in range(12) for w in range(3)]
    seeds = {sampler_seed(seed, n_stored=n, worker_index=w) for seed, n, w in parts}
    # A sum of the parts made seed 0 after 4 stored trials equal to seed 4 with none (and
    # worker strides overlapped likewise): every combination must get its own seed.
    assert len(seeds) == len(parts)
    assert all(0 <= s < 2**32 for s in seeds)


def test_changed_study_file_message_names_the_change(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    path = write_study(tmp_path, name="changed", n_trials=1, epochs=1)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert main(args_for(path, url, tmp_path / "out")) == 0
    path.write_text(path.read_text().replace("epochs = 1", "epochs = 2")
                    .replace('choices = ["sgd", "momentum"]', 'choices = ["sgd"]'))
    assert main([*args_for(path, url, tmp_path / "out"), "--n-trials", "2"]) == 2
    err = capsys.readouterr().err
    assert "changed: search_space (optimizer), fixed (epochs)" in err
    assert "Use a new study name, or --force" in err
    assert len(trials_of(url, "changed")) == 1


def test_trial_reclaimed_by_another_worker_is_not_counted_twice(
        tmp_path: Path, pg_url: str, workers: Workers) -> None:  # noqa: F811
    """The database was out longer than the grace period, so another worker declared a live
    trial dead and queued its retry. The live worker's result cannot be stored any more; it
    goes on with the retry, which resumes from the trial's checkpoint."""
    import optuna

    from tests.hpo.test_crash import checkpoint_epoch

    path = write_study(tmp_path, name="reclaim", n_trials=1, epochs=3, sleep_s=0.7)
    out = tmp_path / "out"
    proc = workers.start(args_for(path, pg_url, out))
    wait_for(lambda: checkpoint_epoch(out, "reclaim", 0) >= 1, timeout=60,
             what="the first checkpoint of trial 0")
    # what fail_stale_trials in another worker does
    storage = optuna.storages.RDBStorage(pg_url)
    try:
        study = optuna.load_study(study_name="reclaim", storage=storage)
        trial_id = study.trials[0]._trial_id
        assert storage.set_trial_state_values(trial_id, TrialState.FAIL)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)(
            study, storage.get_trial(trial_id))
    finally:
        storage.engine.dispose()
    assert workers.wait(proc, timeout=90) == 0, proc.log_path.read_text()[-3000:]
    assert "trial 0 was reclaimed by another worker" in proc.log_path.read_text()
    trials = trials_of(pg_url, "reclaim")
    assert_study_consistent(trials, target=1)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["resumed_from"]["trial"] == 0
