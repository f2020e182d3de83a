"""``python -m hpo.run --study NAME``: run or resume a study until its study-wide target.

Example:
    python -m hpo.run --study demo
    export HPO_STORAGE=postgresql+psycopg2://hpo@127.0.0.1:5432/hpo
    python -m hpo.run --study production --workers 4   # the same on every host

``n_trials`` is a target for the whole study: COMPLETE and PRUNED trials already in storage
count, across restarts, workers and hosts, so rerunning the command resumes and never overshoots.
Exit codes: 0 done (target or timeout reached), 1 the study could not go on (repeated trial
failures, a worker crashed), 2 a user error (one line ``error: ...``), 130 interrupted by
SIGINT (Ctrl-C), 143 by SIGTERM (a scheduler stopping the job).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hpo.cli import add_study_flags, command_parser, log_to_stderr, one_line_errors
from trainers.errors import UserError

if TYPE_CHECKING:
    import optuna

    from hpo.config import StudySpec

log = logging.getLogger("hpo")

EXIT_OK, EXIT_FAILED, EXIT_USER, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("run", "Run (or resume) the Optuna study defined in "
                       "studies/<NAME>.toml. Example: python -m hpo.run --study demo --n-trials 8")
    add_study_flags(p, study="a study name in studies/ (e.g. production, demo) or a path to a "
                    ".toml", output="directory for trial outputs and the embedded database "
                    "(default: output)")
    p.add_argument("--n-trials", type=int, default=None,
                   help="study-wide target of finished trials (default: the study file's)")
    p.add_argument("--timeout", type=float, default=None,
                   help="stop starting new trials after this many seconds (default: the file's)")
    p.add_argument("--workers", default="1",
                   help="worker processes on this host: a number, or 'auto' = one per GPU")
    p.add_argument("--heartbeat-interval", type=int, default=None, metavar="SECONDS",
                   help="seconds between a running trial's heartbeats "
                        "(default: [storage] heartbeat_interval of the study file, else 30)")
    p.add_argument("--grace-period", type=int, default=None, metavar="SECONDS",
                   help="a RUNNING trial without a heartbeat for this long is failed and "
                        "retried (default: [storage] grace_period, else 120)")
    p.add_argument("--max-retry", type=int, default=None, metavar="N",
                   help="how often a trial whose worker died is retried "
                        "(default: [storage] max_retry, else 2)")
    p.add_argument("--force", action="store_true",
                   help="run even though the study file changed since the study was created")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars or lines within a trial (the per-trial lines stay); "
                        "as [run] progress = false")
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    return p


def _parse_workers(value: str) -> int | str:
    if value == "auto":
        return "auto"
    try:
        n = int(value)
    except ValueError:
        raise UserError(f"--workers must be a positive number or 'auto', got {value!r}") from None
    if n < 1:
        raise UserError(f"--workers must be >= 1, got {n}")
    return n


def _storage_overrides(args: RunRequest) -> dict[str, int]:
    """The crash-safety flags that were given, checked like the study file's [storage]."""
    given = {"heartbeat_interval": args.heartbeat_interval, "grace_period": args.grace_period,
             "max_retry": args.max_retry}
    return {k: v for k, v in given.items() if v is not None}


def apply_storage_overrides(spec: StudySpec, overrides: dict[str, int]) -> StudySpec:
    """``spec`` with its [storage] settings replaced by the flags; a bad combination is refused."""
    if not overrides:
        return spec
    storage = dataclasses.replace(spec.storage, **overrides)
    bad = storage.problems()  # the rule of the study file's [storage] (hpo.config)
    if bad:
        raise UserError("; ".join(f"--{key.replace('_', '-')} {problem}" for key, problem in bad))
    return dataclasses.replace(spec, storage=storage)


def _limit_threads(n_workers: int) -> None:
    """Split the host's cores between workers before torch/polars start their thread pools."""
    threads = str(max(1, (os.cpu_count() or 1) // n_workers))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "POLARS_MAX_THREADS"):
        os.environ.setdefault(var, threads)


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """What ``hpo.run`` is asked to do: the command line's options as typed fields (the
    names of ``build_parser``'s destinations), built by ``main`` from argv and by
    ``hpo.api.run_study`` from keyword arguments."""

    study: str
    storage: str | None = None
    output: Path = Path("output")
    n_trials: int | None = None
    timeout: float | None = None
    workers: str = "1"
    heartbeat_interval: int | None = None
    grace_period: int | None = None
    max_retry: int | None = None
    force: bool = False
    quiet: bool = False
    worker_index: int | None = None


# A spawned worker's RunRequest, as JSON in its environment: workers receive the request the
# parent resolved, not options turned back into argv (their argv only names them in `ps`).
WORKER_REQUEST_ENV = "HPO_WORKER_REQUEST"


def request_to_json(request: RunRequest) -> str:
    return json.dumps({k: str(v) if isinstance(v, Path) else v
                       for k, v in dataclasses.asdict(request).items()})


def request_from_json(text: str) -> RunRequest:
    data = json.loads(text)
    return RunRequest(**{**data, "output": Path(data["output"])})


def run_request(request: RunRequest) -> int:
    """Run or resume the study of ``request`` (module docstring); returns the exit code and
    raises ``UserError`` for a user error (nothing written)."""
    workers = _parse_workers(str(request.workers))
    if request.n_trials is not None and request.n_trials < 1:
        raise UserError(f"--n-trials must be >= 1, got {request.n_trials}")
    if request.timeout is not None and request.timeout <= 0:
        raise UserError(f"--timeout must be > 0 seconds, got {request.timeout}")
    if workers == "auto":
        workers_n = _visible_gpus() or 1  # no GPU: one worker, in this process
    else:
        workers_n = int(workers)
    if request.worker_index is None:
        _limit_threads(workers_n)
    return _run(request, workers_n, gpu_pinning=(workers == "auto"))


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_to_stderr()
    request = RunRequest(**vars(args))
    if args.worker_index is not None and WORKER_REQUEST_ENV in os.environ:
        request = request_from_json(os.environ.pop(WORKER_REQUEST_ENV))  # spawned: the spec
    return run_request(request)


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _run(args: RunRequest, n_workers: int, *, gpu_pinning: bool) -> int:
    import optuna

    from hpo.config import load_study_spec
    from hpo.storage import mask_url, resolve_url
    from hpo.study import open_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Optuna logs every failed trial with a traceback; the progress line already names the
    # trial and its reason, and a crash keeps its traceback in the trial's traceback.txt.
    logging.getLogger("optuna.study._optimize").setLevel(logging.ERROR)
    spec = apply_storage_overrides(load_study_spec(args.study), _storage_overrides(args))
    if args.quiet:
        spec = dataclasses.replace(spec, run=dataclasses.replace(spec.run, progress=False))
    if args.worker_index is not None:  # workers share a terminal: lines, never bars
        spec = dataclasses.replace(spec, run=dataclasses.replace(spec.run, bars=False))
    target = args.n_trials or spec.n_trials
    timeout = args.timeout if args.timeout is not None else spec.timeout_s
    if args.worker_index is None:
        preflight(spec)  # the data's problems, before anything is written
    output = args.output
    ensure_output_dir(output)
    url = resolve_url(args.storage, output)
    worker_index = args.worker_index or 0
    study = open_study(spec, url, force=args.force, target=target, worker_index=worker_index,
                       quiet=args.worker_index is not None, output=output)

    if args.worker_index is None:
        log.info("study %s (%s) on %s: target %d finished trials", spec.name, spec.workload,
                 mask_url(url), target)
    if n_workers > 1 and args.worker_index is None:
        code = _spawn_workers(args, url, n_workers, gpu_pinning=gpu_pinning)
    else:
        from hpo.worker import run_worker

        code = run_worker(study, spec, output=output, target=target, timeout=timeout,
                          announce=args.worker_index is None)
    if args.worker_index is None:
        from hpo.progress import print_summary

        if code == EXIT_OK:
            evaluate_when_complete(study, output=output, url=url, target=target,
                                   auto=spec.evaluate.auto,
                                   pbo_blocks=spec.evaluate.pbo_blocks,
                                   test_model=spec.evaluate.test_model,
                                   seeds=spec.evaluate.seeds)
        print_summary(study, spec, url, target, output)
    return code


def ensure_output_dir(output: Path) -> None:
    """Create ``--output`` (a user error in one line when it cannot be created or written:
    a path under a file, a read-only or pseudo file system, no permission)."""
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--output {output} cannot be created ({exc.strerror or exc}); choose "
                        "a directory you can write to") from None
    if not os.access(output, os.W_OK | os.X_OK):
        raise UserError(f"--output {output} is not writable; choose a directory you can write "
                        "to")


def preflight(spec: StudySpec) -> None:
    """The workload's checks of its data (``Workload.preflight``) with the study's fixed
    settings and the search space's midpoint: a panel that cannot train is a one-line
    ``UserError`` before a study, a trial or a directory exists."""
    from trainers.config import from_mapping
    from trainers.registry import get_workload

    workload = get_workload(spec.workload)
    if workload.preflight is None:
        return
    settings = {**spec.fixed_settings(), **{p.name: p.midpoint() for p in spec.search_space}}
    workload.preflight(from_mapping(workload.config_cls, settings, where="settings"))


def evaluate_when_complete(study: optuna.Study, *, output: Path, url: str,
                           target: int, auto: bool = True, pbo_blocks: int = 16,
                           test_model: str = "last_fold", seeds: int = 1) -> None:
    """Open the test period (``hpo.evaluate``) once the study has reached its target.

    Only for workloads with a held-out test period, only when ``target`` trials are finished
    (not after a timeout or an interruption), and only for the first look: once the test
    period was opened, a front that changed since is reported here with the ``--reopen``
    command, never looked at (a report of the same front is refreshed: that is no new look).
    ``auto`` False (``[evaluate] auto = false``) leaves the opening to the user. A failure
    here never touches the study: it prints the reason and the command that retries it.
    """
    from optuna.trial import TrialState

    from hpo.evaluate import ReopenRequired, evaluate_study, has_test_period
    from hpo.progress import evaluate_command

    if not has_test_period(study.user_attrs.get("workload")):
        return
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                   for t in study.get_trials(deepcopy=False))
    if finished < target:
        return
    command = evaluate_command(url, study.study_name, output)
    if not auto:
        log.info("the test period stays closed ([evaluate] auto = false); open it once with: "
                 "%s", command)
        return
    try:
        result = evaluate_study(study, output=output, pbo_blocks=pbo_blocks,
                                test_model=test_model, seeds=seeds)
    except ReopenRequired as exc:
        print(f"\ntest period not reopened: {exc}. Command: {command} --reopen",
              file=sys.stderr)
        return
    except Exception as exc:  # the study is done and stored; the report can be made later
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"\ntest evaluation failed ({type(exc).__name__}: {reason}); the study is "
              f"intact. Retry with: {command}",
              file=sys.stderr)
        return
    state = "written" if result.changed else "unchanged"
    log.info("test report %s: %s", result.path, state)


def pinned_devices(n: int) -> list[str]:
    """The GPU each of ``n`` workers gets: the i-th entry of an existing
    ``CUDA_VISIBLE_DEVICES`` (which torch already counted from), else GPU i."""
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if d.strip()]
    if visible:
        return visible[:n]
    return [str(i) for i in range(n)]


def _spawn_workers(args: RunRequest, url: str, n: int, *, gpu_pinning: bool) -> int:
    """Start ``n`` worker processes on this host against the (already created) study.

    Each worker runs in its own session, so a Ctrl-C in the terminal reaches only this
    process, which forwards it once (a worker that got it twice would exit at once, leaving
    its trial to the heartbeat timeout instead of re-queueing it).
    """
    procs: list[subprocess.Popen] = []
    devices = pinned_devices(n) if gpu_pinning else []
    for i in range(n):
        env = dict(os.environ)
        # The URL travels in the environment, not argv, so its password never shows in `ps`.
        env["HPO_STORAGE"] = url
        if gpu_pinning:
            env["CUDA_VISIBLE_DEVICES"] = devices[i]
        env[WORKER_REQUEST_ENV] = request_to_json(dataclasses.replace(
            args, storage=None, workers="1", worker_index=i))
        # argv names the worker in `ps`; what it runs is the request above
        cmd = [sys.executable, "-m", "hpo.run", "--study", str(args.study),
               "--worker-index", str(i)]
        procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))
    log.info("started %d workers (pids %s)", n, " ".join(str(p.pid) for p in procs))

    interrupted: int | None = None  # the first signal forwarded

    def forward(signum: int, _frame: object) -> None:
        nonlocal interrupted
        if interrupted is not None and signum == signal.SIGINT:
            for p in procs:  # their second SIGINT: each exits at once, like this process
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            os._exit(EXIT_INTERRUPTED)
        interrupted = signum if interrupted is None else interrupted
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(0.2)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    codes = [p.returncode for p in procs]
    if interrupted is not None:
        return 128 + int(interrupted)
    stopped = [c for c in codes if c in (EXIT_INTERRUPTED, EXIT_TERMINATED)]
    if stopped:
        return stopped[0]
    if any(c == EXIT_USER for c in codes):
        return EXIT_USER
    return EXIT_OK if all(c == 0 for c in codes) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
