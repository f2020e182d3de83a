"""``python -m hpo.launch``: the study's workers on a cluster scheduler, SLURM or Kubernetes.

Examples:

    python -m hpo.launch slurm --study production --workers 16 --gpus-per-worker 1 \\
        --storage postgresql+psycopg2://hpo@db:5432/hpo --submit
    python -m hpo.launch k8s --study production --workers 16 --gpus-per-worker 1 \\
        --image registry.example.com/hpo:latest --out k8s/

Both start N copies of ``python -m hpo.run --study NAME`` against one shared storage; the
study-wide target, heartbeats and retries do the rest, as on any N hosts. Each worker gets its
own ``--worker-index`` (the array task or completion index), so workers sharing a node draw
different points.

``slurm`` writes an ``sbatch`` job-array script (plain ``sbatch``, not ``submitit``: a script an
administrator can read and edit, no Python callable pickled across nodes, no dependency), and
with ``--submit`` submits it. SLURM sends the workers SIGTERM ``--signal-s`` seconds before the
time limit (``--signal=TERM@S``): the running trial stops at its next step and is re-queued, and
a new array (the same command) resumes it. ``k8s`` writes manifests: the storage proxy
(``hpo.proxy``) as a Deployment and a Service, the workers as an Indexed Job with
``nvidia.com/gpu`` limits, the database URL by reference to a Secret, and one
ReadWriteMany PersistentVolumeClaim for checkpoints and results. A study on an embedded SQLite
file cannot span hosts and is refused.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from hpo.cli import EXIT_OK, OneLineParser, command_parser, one_line_errors
from trainers.context import atomic_write_bytes
from trainers.errors import UserError

PROXY_PORT = 13000
# SIGTERM this long before SLURM's time limit; hpo.run stops its trial at the next step.
DEFAULT_SIGNAL_S = 120
# Kubernetes waits this long between SIGTERM and SIGKILL.
K8S_GRACE_S = 60
_NAME = re.compile(r"[^a-z0-9-]+")


def k8s_name(study: str) -> str:
    """A DNS-1123 label from a study name or path (lowercase, digits, '-')."""
    stem = Path(study).stem if study.endswith(".toml") else study
    name = _NAME.sub("-", stem.lower()).strip("-")[:40] or "study"
    return f"hpo-{name}"


def _check_shared_storage(storage: str | None) -> None:
    if not storage:
        raise UserError("workers on several nodes need one storage they all reach: pass "
                        "--storage postgresql+psycopg2://... (or grpc://HOST:PORT of "
                        "python -m hpo.proxy)")
    if storage.startswith("sqlite"):
        raise UserError(f"--storage {storage}: an SQLite file cannot be shared by workers on "
                        "several nodes; use PostgreSQL, or the proxy (grpc://HOST:PORT)")


def _worker_command(study: str, output: str, index: str, extra: list[str]) -> list[str]:
    return ["python", "-m", "hpo.run", "--study", study, "--output", output,
            "--worker-index", index, *extra]


# -- SLURM ------------------------------------------------------------------------------------
def slurm_script(args: argparse.Namespace) -> str:
    """The ``sbatch`` job-array script (module docstring)."""
    from hpo.storage import mask_url

    _check_shared_storage(args.storage)
    out = Path(args.output)
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name={k8s_name(args.study)}",
             f"#SBATCH --array=0-{args.workers - 1}",
             "#SBATCH --ntasks=1",
             f"#SBATCH --cpus-per-task={args.cpus_per_worker}",
             f"#SBATCH --time={args.time}",
             f"#SBATCH --signal=TERM@{args.signal_s}",
             f"#SBATCH --output={out / 'slurm' / '%x_%A_%a.log'}"]
    if args.gpus_per_worker:
        lines.append(f"#SBATCH --gres=gpu:{args.gpus_per_worker}")
    if args.partition:
        lines.append(f"#SBATCH --partition={args.partition}")
    storage = args.storage
    lines += ["",
              f"# {args.workers} workers of study {args.study}; storage {mask_url(storage)}.",
              "# Each is one array task; the study-wide target stops them all. Written by",
              "# python -m hpo.launch slurm: run the same command again to add workers.",
              "set -euo pipefail"]
    if args.workdir:
        lines.append(f"cd {shlex.quote(args.workdir)}")
    if args.venv:
        lines.append(f"source {shlex.quote(str(Path(args.venv) / 'bin' / 'activate'))}")
    lines += [f"export HPO_STORAGE={shlex.quote(storage)}",
              # exec: SLURM's SIGTERM reaches hpo.run itself, which stops at the next step
              "exec " + " ".join(shlex.quote(a) for a in _worker_command(
                  args.study, str(out), "PLACEHOLDER", args.run_args)).replace(
                  "PLACEHOLDER", '"$SLURM_ARRAY_TASK_ID"')]
    return "\n".join(lines) + "\n"


def launch_slurm(args: argparse.Namespace) -> str:
    """Write the script (and submit it with ``--submit``); the line to print."""
    script = Path(args.script or Path(args.output) / "slurm" / f"{k8s_name(args.study)}.sbatch")
    text = slurm_script(args)
    sbatch = shutil.which("sbatch") if args.submit else None
    if args.submit and sbatch is None:
        raise UserError("--submit needs sbatch on this host's PATH (a SLURM login node); "
                        "leave out --submit to only write the script")
    (Path(args.output) / "slurm").mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(script, text.encode(), durable=False)
    script.chmod(0o755)
    if not args.submit:
        return f"wrote {script}: submit it with sbatch {script}"
    done = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        raise UserError(f"sbatch refused {script}: {reason[-1] if reason else done.returncode}")
    return f"wrote {script}; submitted job array {done.stdout.strip()} ({args.workers} workers)"


# -- Kubernetes -------------------------------------------------------------------------------
def k8s_manifests(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """File name -> the resources it holds (module docstring)."""
    name = k8s_name(args.study)
    labels = {"app.kubernetes.io/name": "hpo", "app.kubernetes.io/instance": name}
    secret = {"secretKeyRef": {"name": args.storage_secret, "key": args.storage_secret_key}}
    proxy_labels = {**labels, "app.kubernetes.io/component": "proxy"}
    proxy = [{
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": f"{name}-proxy", "labels": proxy_labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": proxy_labels},
                 "template": {"metadata": {"labels": proxy_labels}, "spec": {
                     "containers": [{
                         "name": "proxy", "image": args.image,
                         "command": ["python", "-m", "hpo.proxy", "--host", "0.0.0.0",
                                     "--port", str(PROXY_PORT)],
                         "env": [{"name": "HPO_STORAGE", "valueFrom": secret}],
                         "ports": [{"containerPort": PROXY_PORT, "name": "grpc"}],
                         "readinessProbe": {"tcpSocket": {"port": PROXY_PORT},
                                            "periodSeconds": 5},
                         "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": f"{name}-proxy", "labels": proxy_labels},
         "spec": {"selector": proxy_labels,
                  "ports": [{"name": "grpc", "port": PROXY_PORT, "targetPort": PROXY_PORT}]}}]
    volume = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
              "metadata": {"name": f"{name}-output", "labels": labels},
              "spec": {"accessModes": ["ReadWriteMany"],
                       "resources": {"requests": {"storage": args.volume_size}}}}
    if args.storage_class:
        volume["spec"]["storageClassName"] = args.storage_class
    worker_labels = {**labels, "app.kubernetes.io/component": "worker"}
    limits: dict[str, str] = {}
    if args.gpus_per_worker:
        limits["nvidia.com/gpu"] = str(args.gpus_per_worker)
    command = _worker_command(args.study, "/output", "$(JOB_COMPLETION_INDEX)", args.run_args)
    workers = [{
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": f"{name}-workers", "labels": worker_labels},
        "spec": {
            "completionMode": "Indexed", "completions": args.workers,
            "parallelism": args.workers,
            # a worker that exits 1 (failures in a row) is not restarted for ever
            "backoffLimitPerIndex": 2, "maxFailedIndexes": args.workers,
            "podFailurePolicy": {"rules": [
                # 143: stopped by SIGTERM (preempted, drained): its trial is re-queued; the
                # pod's restart does not count against the retries.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [2]}}]},
            "template": {"metadata": {"labels": worker_labels}, "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": K8S_GRACE_S,
                "containers": [{
                    "name": "worker", "image": args.image, "command": command,
                    "env": [{"name": "HPO_STORAGE",
                             "value": f"grpc://{name}-proxy:{PROXY_PORT}"},
                            {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
                                "fieldPath": "metadata.annotations['batch.kubernetes.io/"
                                             "job-completion-index']"}}}],
                    "resources": {"limits": limits or {"cpu": "2"},
                                  "requests": {"cpu": str(args.cpus_per_worker)}},
                    "volumeMounts": [{"name": "output", "mountPath": "/output"}]}],
                "volumes": [{"name": "output",
                             "persistentVolumeClaim": {"claimName": f"{name}-output"}}]}}}}]
    return {"proxy.yaml": proxy, "volume.yaml": [volume], "workers.yaml": workers}


def write_k8s(args: argparse.Namespace) -> str:
    import yaml

    out = Path(args.out)
    manifests = k8s_manifests(args)
    out.mkdir(parents=True, exist_ok=True)
    for file, docs in manifests.items():
        text = yaml.safe_dump_all(docs, sort_keys=False)
        atomic_write_bytes(out / file, text.encode(), durable=False)
    return (f"wrote {', '.join(str(out / f) for f in manifests)}: create the Secret "
            f"{args.storage_secret} (key {args.storage_secret_key}: the database URL), then "
            f"kubectl apply -f {out}")


# -- the command ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "launch",
        "Launch a study's workers on SLURM (a job array) or Kubernetes (manifests). "
        "Example: python -m hpo.launch slurm --study production --workers 16 "
        "--gpus-per-worker 1 --storage postgresql+psycopg2://hpo@db:5432/hpo --submit")
    sub = p.add_subparsers(dest="engine", required=True, parser_class=OneLineParser)
    for engine in ("slurm", "k8s"):
        s = sub.add_parser(engine, help=f"workers on {engine}")
        s.add_argument("--study", required=True,
                       help="study name (studies/NAME.toml) or path, as for hpo.run")
        s.add_argument("--workers", type=int, required=True, help="how many workers")
        s.add_argument("--gpus-per-worker", type=int, default=0,
                       help="GPUs each worker gets (default: 0)")
        s.add_argument("--cpus-per-worker", type=int, default=4,
                       help="CPU cores each worker gets (default: 4)")
        s.add_argument("--run-args", nargs=argparse.REMAINDER, default=[],
                       help="the rest is passed to hpo.run (e.g. --timeout 36000)")
    slurm = sub.choices["slurm"]
    slurm.add_argument("--storage", default=None,
                       help="the storage every worker uses (PostgreSQL or grpc://; required)")
    slurm.add_argument("--output", default="output",
                       help="the study's output directory on the shared filesystem "
                       "(default: output)")
    slurm.add_argument("--time", default="24:00:00", help="the time limit of each task")
    slurm.add_argument("--signal-s", type=int, default=DEFAULT_SIGNAL_S,
                       help="SIGTERM this many seconds before the time limit (default: "
                       f"{DEFAULT_SIGNAL_S})")
    slurm.add_argument("--partition", default=None, help="the SLURM partition")
    slurm.add_argument("--workdir", default=None,
                       help="the checkout each task runs in (default: where sbatch runs)")
    slurm.add_argument("--venv", default=None, help="a virtual environment to activate")
    slurm.add_argument("--script", default=None,
                       help="where to write the script (default: "
                       "<output>/slurm/hpo-<study>.sbatch)")
    slurm.add_argument("--submit", action="store_true", help="also submit it with sbatch")
    k8s = sub.choices["k8s"]
    k8s.add_argument("--out", required=True, help="the directory the manifests go to")
    k8s.add_argument("--image", default="hpo:latest",
                     help="the container image with this project (default: hpo:latest)")
    k8s.add_argument("--storage-secret", default="hpo-storage",
                     help="the Secret holding the database URL (default: hpo-storage)")
    k8s.add_argument("--storage-secret-key", default="url",
                     help="its key (default: url)")
    k8s.add_argument("--volume-size", default="100Gi",
                     help="the shared output volume (default: 100Gi)")
    k8s.add_argument("--storage-class", default=None,
                     help="a ReadWriteMany storage class for it (default: the cluster's)")
    return p


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if args.gpus_per_worker < 0 or args.cpus_per_worker < 1:
        raise UserError("--gpus-per-worker must be >= 0 and --cpus-per-worker >= 1")
    from hpo.config import load_study_spec

    load_study_spec(args.study)  # a missing or broken study file, before anything is written
    line = launch_slurm(args) if args.engine == "slurm" else write_k8s(args)
    print(line)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
