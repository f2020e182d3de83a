"""``python -m hpo.launch``: a SLURM job-array script that really runs the study's workers,
and Kubernetes manifests that validate against the Kubernetes schema and point at real entry
points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from hpo.launch import main
from tests.conftest import REPO
from tests.hpo.test_crash import trials_of, write_study


def _manifests(tmp_path: Path, *extra: str) -> dict[str, list[dict]]:
    study = write_study(tmp_path, name="prod", n_trials=2, epochs=1)
    out = tmp_path / "k8s"
    assert main(["k8s", "--study", str(study), "--workers", "8", "--gpus-per-worker", "2",
                 "--out", str(out), "--image", "registry.example.com/hpo:1", *extra]) == 0
    return {f.name: list(yaml.safe_load_all(f.read_text())) for f in sorted(out.iterdir())}


def test_k8s_manifests_validate_against_the_kubernetes_schema(tmp_path: Path) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate")
    files = _manifests(tmp_path)
    assert sorted(files) == ["proxy.yaml", "volume.yaml", "workers.yaml"]
    version = kv.latest_version()
    for docs in files.values():
        for doc in docs:
            kv.validate(doc, version, strict=True)  # raises on any unknown or wrong field
    kinds = sorted(d["kind"] for docs in files.values() for d in docs)
    assert kinds == ["Deployment", "Job", "PersistentVolumeClaim", "Service"]


def test_k8s_workers_are_an_indexed_job_of_real_entry_points(tmp_path: Path) -> None:
    from hpo.proxy import build_parser as proxy_parser
    from hpo.run import build_parser as run_parser

    files = _manifests(tmp_path)
    job = files["workers.yaml"][0]
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 8
    pod = job["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert worker["command"][:3] == ["python", "-m", "hpo.run"]
    # Kubernetes expands $(JOB_COMPLETION_INDEX) from the env entry that defines it
    assert "JOB_COMPLETION_INDEX" in {e["name"] for e in worker["env"]}
    parsed = run_parser().parse_args(
        [a.replace("$(JOB_COMPLETION_INDEX)", "3") for a in worker["command"][3:]])
    assert parsed.worker_index == 3 and str(parsed.output) == "/output"
    env = {e["name"]: e for e in worker["env"]}
    service = files["proxy.yaml"][1]["metadata"]["name"]
    assert env["HPO_STORAGE"]["value"] == f"grpc://{service}:13000"
    assert worker["volumeMounts"][0]["mountPath"] == "/output"
    proxy = files["proxy.yaml"][0]["spec"]["template"]["spec"]["containers"][0]
    assert proxy["command"][:3] == ["python", "-m", "hpo.proxy"]
    proxy_parser().parse_args(proxy["command"][3:])
    # the database URL stays in the Secret: only its name is in the manifests
    ref = {e["name"]: e for e in proxy["env"]}["HPO_STORAGE"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "hpo-storage", "key": "url"}
    text = "".join((tmp_path / "k8s" / f).read_text() for f in files)
    assert "postgresql" not in text


def test_the_slurm_script_runs_the_studys_workers(tmp_path: Path, pg_url: str) -> None:
    study = write_study(tmp_path, name="array", n_trials=3, epochs=2)
    out = tmp_path / "out"
    assert main(["slurm", "--study", str(study), "--workers", "2", "--gpus-per-worker", "1",
                 "--storage", pg_url, "--output", str(out), "--workdir", str(REPO),
                 "--venv", sys.prefix, "--time", "01:00:00"]) == 0
    script = out / "slurm" / "hpo-array.sbatch"
    text = script.read_text()
    for line in ("#SBATCH --array=0-1", "#SBATCH --gres=gpu:1", "#SBATCH --signal=TERM@120",
                 "#SBATCH --time=01:00:00"):
        assert line in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # Each array task, as SLURM would start it: the same script, its own task id.
    for task in ("0", "1"):
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                              env={**os.environ, "SLURM_ARRAY_TASK_ID": task,
                                   "PYTHONPATH": str(REPO)}, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    trials = trials_of(pg_url, "array")
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 3


def test_launching_is_refused_in_one_line_when_it_cannot_work(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    study = write_study(tmp_path, name="bad", n_trials=1, epochs=1)
    out = tmp_path / "out"
    base = ["slurm", "--study", str(study), "--workers", "2", "--output", str(out)]
    assert main([*base, "--storage", f"sqlite:///{tmp_path}/x.db"]) == 2
    assert "an SQLite file cannot be shared" in capsys.readouterr().err
    assert main(base) == 2
    assert "need one storage they all reach" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert main([*base, "--storage", "postgresql+psycopg2://h/db", "--submit"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --submit needs sbatch") and "\n" not in err
    assert not out.exists()  # nothing written
    assert main(["k8s", "--study", str(tmp_path / "none.toml"), "--workers", "1", "--out",
                 str(tmp_path / "k")]) == 2
    assert not (tmp_path / "k").exists()
