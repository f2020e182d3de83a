"""``hpo.launch slurm --submit`` on a real one-node SLURM cluster (Debian's slurm-wlm and
munge), started here in a temporary directory: 2 array tasks finish a 4-trial study together.

Its own target, outside ``make test`` and CI: ``make test-slurm`` (which installs slurm-wlm
and munge with apt where it can). Skipped, with the reason, without the daemons or root, or
without ``HPO_TEST_SLURM=1``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from optuna.trial import TrialState

from hpo.launch import main
from tests.conftest import REPO
from tests.hpo.test_crash import trials_of, write_study

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if os.environ.get("HPO_TEST_SLURM") != "1":
        pytest.skip("the real-SLURM test runs by make test-slurm (HPO_TEST_SLURM=1)")
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        pytest.skip(f"no {', '.join(missing)}: apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the throwaway cluster runs its daemons as root")
    # The daemons refuse paths that are too long for their sockets: a short directory.
    root = Path(f"/tmp/hpo-slurm-{os.getpid()}")
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("state", "spool", "log", "munge"):
        (root / sub).mkdir(parents=True)
    host = socket.gethostname().split(".")[0]
    memory = int(open("/proc/meminfo").read().split()[1]) // 1024 - 2048
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=hpotest
SlurmctldHost={host}
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmUser=root
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmdSpoolDir={root}/spool
StateSaveLocation={root}/state
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} CPUs={os.cpu_count()} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    subprocess.run(["munged", "--force", "-S", f"{root}/munge/munge.socket", "--key-file",
                    str(key), "--pid-file", f"{root}/munge/munged.pid", "--log-file",
                    f"{root}/munge/munged.log", "--seed-file", f"{root}/munge/seed"],
                   check=True, env=env)
    subprocess.run(["slurmctld"], check=True, env=env)
    subprocess.run(["slurmd"], check=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True,
                                           text=True, env=env).stdout:
            if time.monotonic() > deadline:
                pytest.fail("the throwaway SLURM node never became idle:\n"
                            + (root / "log" / "slurmctld.log").read_text()[-2000:])
            time.sleep(0.5)
        yield env
    finally:
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            path = root / pid_file
            if path.exists():
                try:
                    os.kill(int(path.read_text().strip()), 15)
                except (ValueError, ProcessLookupError):
                    pass
        time.sleep(1)
        shutil.rmtree(root, ignore_errors=True)


def test_two_array_tasks_finish_a_study(tmp_path: Path, pg_url: str, slurm: dict[str, str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    study = write_study(tmp_path, name="slurmed", n_trials=4, epochs=2, sleep_s=0.2)
    out = tmp_path / "out"
    assert main(["slurm", "--study", str(study), "--workers", "2", "--cpus-per-worker", "1",
                 "--storage", pg_url, "--output", str(out), "--workdir", str(REPO),
                 "--venv", sys.prefix, "--time", "00:10:00", "--submit"]) == 0
    deadline = time.monotonic() + 300
    while subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, "the array did not finish in 5 minutes"
        time.sleep(1)
    logs = sorted((out / "slurm").glob("*.log"))
    assert len(logs) == 2, logs  # one per array task
    trials = trials_of(pg_url, "slurmed")
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 4, \
        "\n".join(p.read_text()[-1500:] for p in logs)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both tasks ran trials
