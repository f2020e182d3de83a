"""A full disk overnight, for real: the output directory on a 12 MB tmpfs (skipped where the
machine cannot mount one). The worker stops at the first trial that needs space, in one line
naming the path and the bytes, exit 1; that trial is queued again, not charged; once space is
freed the same command resumes it and reaches the target."""

from __future__ import annotations

import errno
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.faults import environment_fault
from hpo.run import main
from tests.hpo.test_crash import STUDY
from trainers.errors import DiskFull


@pytest.fixture
def small_disk(tmpfs) -> Path:  # type: ignore[no-untyped-def]
    return tmpfs(12)


def test_a_full_disk_stops_at_the_first_trial_and_the_rerun_resumes_it(
        tmp_path: Path, small_disk: Path, capsys: pytest.CaptureFixture) -> None:
    study = tmp_path / "full.toml"
    study.write_text(STUDY.format(name="full", n_trials=3, epochs=3, sleep_s=0,
                                  extra="").replace("[trainer]", "[trainer]\npayload_kb = 512"))
    db = f"sqlite:///{tmp_path / 'hpo.db'}"  # the database on another disk, as overnight
    out = small_disk / "out"
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (11 * 1024 * 1024))  # leaves ~1 MB: no room for a checkpoint
    capsys.readouterr()
    assert main(["--study", str(study), "--storage", db, "--output", str(out)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1
    assert "no space left on device for " in err[0] and "checkpoint.pt" in err[0]
    assert "bytes needed" in err[0] and "free space on that filesystem" in err[0]
    trials = optuna.load_study(study_name="full", storage=db).trials
    # one trial stopped, queued again; nothing charged to the search
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].user_attrs["environment_fault"].startswith("no space left on device")
    assert trials[0].user_attrs["fail_reason"].startswith("environment: ")

    filler.unlink()
    assert main(["--study", str(study), "--storage", db, "--output", str(out)]) == 0
    trials = optuna.load_study(study_name="full", storage=db).trials
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 3 and states.count(TrialState.FAIL) == 1
    assert trials[1].params == trials[0].params  # the configuration was not lost
    assert trials[1].user_attrs["environment_fault"] is None


def test_an_enospc_anywhere_inside_a_trial_is_an_environment_fault() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/data/cache/f.arrow")
        except OSError as exc:
            raise RuntimeError("writing the cache failed") from exc
    except RuntimeError as wrapped:
        line = environment_fault(wrapped)
    assert line is not None and line.startswith("no space left on device for "
                                                 "/data/cache/f.arrow")
    assert environment_fault(ValueError("a bug")) is None
    assert "3,000 bytes needed, 10 free" in str(DiskFull("/x", needed=3000, free=10))
    ro = OSError(errno.EROFS, "Read-only file system", "/mnt/ro/out")
    assert environment_fault(ro).startswith("read-only filesystem at /mnt/ro/out")


def test_a_cache_build_that_cannot_fit_says_how_many_bytes_before_writing(
        small_disk: Path) -> None:
    from cache import CacheSpec, load_or_build
    from cache.errors import NoSpace
    from trainers.atft_gat.synthetic import generate_market

    market = generate_market(n_stocks=200, n_dates=500, seed=0)
    (small_disk / "filler").write_bytes(b"\0" * (11 * 1024 * 1024))
    root = small_disk / "cache"
    with pytest.raises(NoSpace) as err:
        load_or_build(market, root, CacheSpec(target_columns=("ret_1d",)))
    assert "bytes needed" in str(err.value) and err.value.needed > err.value.free
    assert environment_fault(err.value) == str(err.value)
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]  # nothing torn
