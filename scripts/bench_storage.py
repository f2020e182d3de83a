"""Per-trial overhead of the service versus Optuna with its own heartbeats, its share of a real
demo trial, and throughput with 1, 2 and 4 workers.

Run from the repository root:

    python -m scripts.bench_storage                 # SQLite + PostgreSQL (if reachable)
    python -m scripts.bench_storage --trials 100 --profile output/bench/service.prof

Targets: service <= 1.25x Optuna with its own heartbeats (``service_vs_heartbeat_median``, on
each backend); the service's work outside ``train`` <= 1 % of a demo trial's wall time
(``demo_trial``); 4 sleeping workers >= 3.5x one.

* overhead: the same TPE sampler (multivariate, constant liar), the same three-parameter search
  space and three objectives, an objective that returns at once. "bare" is
  ``study.optimize`` on a plain storage URL; "service" is ``hpo.worker.run_worker`` with
  everything it does per trial (heartbeats, stale-trial check, budget guard, user attrs,
  per-trial metrics.json and history, results files, progress line). Both run the same number
  of trials in a fresh study, so TPE's own growth with the trial count cancels out: on SQLite
  each run in a file of its own, as it creates it (Optuna's in SQLite's default rollback-journal
  mode, the service's in write-ahead-log mode), on PostgreSQL in one throwaway database.
  Two more rows tell the costs apart:
  ``bare_heartbeat_ms`` is bare Optuna on a plain ``RDBStorage`` with the same crash-safety
  settings (heartbeats, retry callback, pool_pre_ping): what heartbeats cost in Optuna itself.
  ``service_storage_ms`` is the same bare loop on the service's storage
  (``hpo.storage.open_storage``: Optuna's RDBStorage with resilient heartbeats and a retried
  final state write, and SQLite's write-ahead log): the storage layer alone.
  ``service_without_artifacts_ms`` is the service without the per-trial dashboard artifacts
  (learning-curve PNG, file links, note; ``hpo.artifacts``). ``service_ratio_median`` is the
  median over the repeats of service / bare measured side by side (robust to the machine's
  drift between repeats, which the best-of figures are not); ``service_vs_heartbeat_median``
  the same against Optuna with its own heartbeats: the target.
* demo_trial: two trials of ``studies/demo.toml`` (the real ATFT-GAT workload) through
  ``hpo.worker.run_worker`` on each backend, timing ``train`` inside: ``overhead_ms`` is the
  worker's wall time outside ``train`` per trial (sampling, storage writes, attrs, metrics
  files, artifacts, results files, progress, the collection after each trial),
  ``overhead_pct`` its share of a trial's wall time. ``without_gc_freeze_pct``: the same with
  the worker's ``gc.freeze`` switched off (why it stays).
* workers: ``python -m hpo.run --workers N`` on an objective that sleeps 0.5 s (on PostgreSQL
  when reachable, and then again on one SQLite file as ``workers_sqlite``); the throughput
  of each worker process is its trials over the span from its first start to its last
  completion (process start-up is not a trial cost), summed over the workers.

Writes ``output/bench/storage.json`` and prints a table. PostgreSQL is
``$HPO_BENCH_PG_URL`` (default: postgres@127.0.0.1:5432), where a throwaway database is
created and dropped.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from trainers.context import TrialContext
from trainers.registry import Workload

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("HPO_BENCH_PG_URL",
                              "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
WORKLOAD_NAME = "scripts.bench_storage"
SLEEP_S = 0.5  # the sleeping objective of the worker benchmark
WORKER_COUNTS = (1, 2, 4)


@dataclass(frozen=True)
class BenchConfig:
    lr: float = 0.1
    width: int = 1
    optimizer: str = "sgd"
    sleep_s: float = 0.0


def _values(lr: float, width: int, optimizer: str) -> tuple[float, float, float]:
    loss = width * (1.0 - lr) ** 2 + (0.1 if optimizer == "sgd" else 0.0)
    return loss, -math.log1p(loss), lr * width


def train(config: BenchConfig, ctx: TrialContext) -> dict[str, float]:
    """Returns at once (or after ``sleep_s``); one epoch reported, like a one-epoch trainer."""
    if config.sleep_s:
        time.sleep(config.sleep_s)
    loss, score, x = _values(config.lr, config.width, config.optimizer)
    ctx.report(1, {"loss": loss})
    return {"loss": loss, "score": score, "x": x}


WORKLOAD = Workload(name="bench", config_cls=BenchConfig, train=train,
                    metrics={"loss": "minimize", "score": "maximize", "x": "minimize"},
                    description="Instant objective for the storage benchmark.")

def study(name: str, *, n_trials: int, sleep_s: float = 0.0) -> dict:
    """The benchmark's study: three objectives of the instant workload, TPE, a small space."""
    return {
        "name": name, "description": "storage benchmark", "workload": WORKLOAD_NAME,
        "n_trials": n_trials,
        "objectives": [{"metric": "loss", "direction": "minimize"},
                       {"metric": "score", "direction": "maximize"},
                       {"metric": "x", "direction": "minimize"}],
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 10},
        "trainer": {"sleep_s": sleep_s},
        "storage": {"heartbeat_interval": 30, "grace_period": 120},
        "search_space": {
            "lr": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
            "width": {"type": "int", "low": 1, "high": 4},
            "optimizer": {"type": "categorical", "choices": ["sgd", "momentum"]}},
    }


def write_study(directory: Path, *, name: str, n_trials: int, sleep_s: float = 0.0) -> Path:
    from hpo.studyfile import dump_study

    path = directory / f"{name}.toml"
    path.write_text(dump_study(study(name, n_trials=n_trials, sleep_s=sleep_s)))
    return path


# -- databases -------------------------------------------------------------------------------
@contextmanager
def postgres_database() -> Iterator[str | None]:
    """A fresh database on the benchmark server, dropped afterwards; None when unreachable."""
    try:
        import sqlalchemy

        admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT",
                                         connect_args={"connect_timeout": 3})
        name = f"hpo_bench_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # no server: the PostgreSQL rows are skipped, with the reason
        print(f"PostgreSQL skipped: {str(exc).splitlines()[0]}", file=sys.stderr)
        yield None
        return
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name})
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


# -- per-trial overhead ----------------------------------------------------------------------
def bare_ms(url: str, *, n_trials: int, name: str, heartbeat: bool = False,
            service_storage: bool = False) -> float:
    """Bare ``study.optimize``; with ``heartbeat``, on an RDBStorage with the service's crash
    safety and engine settings (heartbeats, retry callback, pool) but nothing else; with
    ``service_storage``, on the storage the service opens (same settings)."""
    import optuna

    from hpo.config import load_study_spec
    from hpo.storage import _engine_kwargs, open_storage
    from hpo.study import make_sampler

    with tempfile.TemporaryDirectory() as tmp:
        spec = load_study_spec(str(write_study(Path(tmp), name=name, n_trials=n_trials)))
    storage: object = url
    if service_storage:
        storage = open_storage(url, heartbeat_interval=spec.storage.heartbeat_interval,
                               grace_period=spec.storage.grace_period,
                               max_retry=spec.storage.max_retry)
    elif heartbeat:
        storage = optuna.storages.RDBStorage(
            url, engine_kwargs=_engine_kwargs(url),
            heartbeat_interval=spec.storage.heartbeat_interval,
            grace_period=spec.storage.grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=spec.storage.max_retry))
    study = optuna.create_study(study_name=name, storage=storage,
                                directions=["minimize", "maximize", "minimize"],
                                sampler=make_sampler(spec))

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        return _values(trial.suggest_float("lr", 0.01, 0.5, log=True),
                       trial.suggest_int("width", 1, 4),
                       trial.suggest_categorical("optimizer", ["sgd", "momentum"]))

    started = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    elapsed = time.perf_counter() - started
    study._storage.remove_session()
    return 1000 * elapsed / n_trials


@contextmanager
def artifacts_disabled() -> Iterator[None]:
    """Skip the per-trial dashboard artifacts (learning-curve PNG, file copies, note), to
    separate their cost from the storage path's."""
    import hpo.artifacts

    original = hpo.artifacts.upload_trial_artifacts
    hpo.artifacts.upload_trial_artifacts = lambda *a, **k: []
    try:
        yield
    finally:
        hpo.artifacts.upload_trial_artifacts = original


def service_ms(url: str, *, n_trials: int, name: str, profile: Path | None = None,
               artifacts: bool = True) -> float:
    if not artifacts:
        with artifacts_disabled():
            return service_ms(url, n_trials=n_trials, name=name, profile=profile)
    from hpo.config import load_study_spec
    from hpo.study import open_study
    from hpo.worker import run_worker

    with tempfile.TemporaryDirectory() as tmp:
        spec = load_study_spec(str(write_study(Path(tmp), name=name, n_trials=n_trials)))
        study = open_study(spec, url, force=False, target=n_trials, quiet=True)
        profiler = None
        if profile is not None:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        started = time.perf_counter()
        code = run_worker(study, spec, output=Path(tmp) / "out", target=n_trials, timeout=None,
                          announce=False)
        elapsed = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
            profile.parent.mkdir(parents=True, exist_ok=True)
            profiler.dump_stats(str(profile))
    if code != 0:
        raise RuntimeError(f"service run exited {code}")
    return 1000 * elapsed / n_trials


# -- a real demo trial -----------------------------------------------------------------------
DEMO_STUDY = REPO / "studies" / "demo.toml"


def demo_trial(url: str, *, n_trials: int, tmp: Path, freeze: bool = True) -> dict[str, float]:
    """``n_trials`` trials of the demo study through the worker; the time outside ``train``."""
    import dataclasses

    import hpo.objective
    import hpo.worker
    from hpo.config import load_study_spec
    from hpo.study import open_study

    spec = dataclasses.replace(load_study_spec(str(DEMO_STUDY)),
                               name=f"demo_bench_{uuid.uuid4().hex[:8]}")
    in_train: list[float] = []
    original_get, original_freeze = hpo.objective.get_workload, hpo.worker._freeze_heap

    def timed_workload(name: str) -> Workload:
        workload = original_get(name)

        def train(config: object, ctx: TrialContext) -> dict[str, float]:
            started = time.perf_counter()
            try:
                return workload.train(config, ctx)
            finally:
                in_train.append(time.perf_counter() - started)

        return dataclasses.replace(workload, train=train)

    hpo.objective.get_workload = timed_workload
    if not freeze:
        hpo.worker._freeze_heap = lambda: False
    try:
        study = open_study(spec, url, force=False, target=n_trials, quiet=True)
        started = time.perf_counter()
        code = hpo.worker.run_worker(study, spec, output=tmp / "demo_out", target=n_trials,
                                     timeout=None, announce=False)
        wall = time.perf_counter() - started
    finally:
        hpo.objective.get_workload, hpo.worker._freeze_heap = original_get, original_freeze
    if code != 0 or len(in_train) != n_trials:
        raise RuntimeError(f"demo run exited {code} after {len(in_train)} trials")
    overhead = (wall - sum(in_train)) / n_trials
    return {"trial_s": round(wall / n_trials, 2), "train_s": round(sum(in_train) / n_trials, 2),
            "overhead_ms": round(1000 * overhead, 1),
            "overhead_pct": round(100 * overhead / (wall / n_trials), 2)}


# -- worker throughput -----------------------------------------------------------------------
# A worker exactly as ``hpo.run --workers N`` starts it (``--worker-index i``), with the
# per-trial dashboard artifacts switched off.
_LEAN_WORKER = ("import runpy, hpo.artifacts as a; a.upload_trial_artifacts = lambda *x, **k: []; "
                "runpy.run_module('hpo.run', run_name='__main__')")


def workers_throughput(url: str, n_workers: int, *, trials_per_worker: int, tmp: Path,
                       artifacts: bool = True) -> float:
    """Trials per second of ``python -m hpo.run --workers N`` on a 0.5 s objective."""
    import optuna
    from optuna.trial import TrialState

    name = f"bench_workers_{n_workers}{'' if artifacts else '_lean'}"
    path = write_study(tmp, name=name, n_trials=trials_per_worker * n_workers, sleep_s=SLEEP_S)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HPO_STORAGE": url}
    base = ["--study", str(path), "--output", str(tmp / "out")]
    if artifacts:
        commands = [[sys.executable, "-m", "hpo.run", *base, "--workers", str(n_workers)]]
    else:  # the study first (as --workers does), then the N workers
        from hpo.config import load_study_spec
        from hpo.study import open_study

        spec = load_study_spec(str(path))
        open_study(spec, url, force=False, target=spec.n_trials, quiet=True)
        commands = [[sys.executable, "-c", _LEAN_WORKER, *base, "--worker-index", str(i)]
                    for i in range(n_workers)]
    procs = [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for c in commands]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"{n_workers} workers: exit {proc.returncode}: {err[-2000:]}")
    study = optuna.load_study(study_name=name, storage=url)
    by_worker: dict[str, list] = {}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        by_worker.setdefault(t.user_attrs["worker"], []).append(t)
    total = 0.0
    for trials in by_worker.values():
        span = (max(t.datetime_complete for t in trials)
                - min(t.datetime_start for t in trials)).total_seconds()
        total += len(trials) / span
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.bench_storage", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=60,
                   help="trials per overhead measurement (default: 60)")
    p.add_argument("--repeats", type=int, default=2,
                   help="interleaved repeats of each overhead run; the best is kept (default: 2)")
    p.add_argument("--worker-trials", type=int, default=8,
                   help="trials per worker in the throughput runs (default: 8)")
    p.add_argument("--output", type=Path, default=Path("output/bench/storage.json"))
    p.add_argument("--profile", type=Path, default=None,
                   help="write a cProfile of the service run on PostgreSQL (or SQLite) here")
    p.add_argument("--skip-workers", action="store_true", help="no worker throughput rows")
    p.add_argument("--skip-overhead", action="store_true",
                   help="no per-trial overhead rows (e.g. to run demo_trial alone)")
    p.add_argument("--demo-backends", default="sqlite,postgres",
                   help="backends of the demo_trial row (default: sqlite,postgres)")
    p.add_argument("--demo-trials", type=int, default=2,
                   help="demo-study trials per demo_trial run; 0 skips the row (default: 2)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp, postgres_database() as pg:
        # SQLite: every run on a file of its own, as each creates it (the service's is in
        # write-ahead-log mode, Optuna's in SQLite's default rollback-journal mode).
        # PostgreSQL: every run a fresh study in one throwaway database.
        def sqlite_url(name: str) -> str:
            return f"sqlite:///{Path(tmp) / name}.db"

        backends = {"sqlite": sqlite_url, **({"postgres": lambda name: pg} if pg else {})}
        for label, url_of in ({} if args.skip_overhead else backends).items():
            profile = args.profile if label == ("postgres" if pg else "sqlite") else None
            # warm-up (imports, first connections, schema) on a throwaway study
            bare_ms(url_of("warmup_bare"), n_trials=3, name="warmup_bare")
            service_ms(url_of("warmup_service"), n_trials=3, name="warmup_service")
            # The heap of imported modules (~300k objects with torch) is frozen for every row,
            # as a worker freezes it at start: an automatic full collection of it takes ~130 ms
            # and would land in whichever run happens to trigger it.
            gc.collect()
            gc.freeze()
            # Interleaved repeats, best of each: the machine's other load only ever adds time.
            runs: dict[str, list[float]] = {"bare": [], "bare_hb": [], "storage": [],
                                            "service": [], "lean": []}
            for i in range(args.repeats):
                names = {key: f"{key}_{i}" for key in runs}
                runs["bare"].append(bare_ms(url_of(names["bare"]), n_trials=args.trials,
                                            name=names["bare"]))
                runs["bare_hb"].append(bare_ms(url_of(names["bare_hb"]), n_trials=args.trials,
                                               name=names["bare_hb"], heartbeat=True))
                runs["storage"].append(bare_ms(url_of(names["storage"]), n_trials=args.trials,
                                               name=names["storage"], service_storage=True))
                runs["service"].append(service_ms(url_of(names["service"]),
                                                  n_trials=args.trials, name=names["service"]))
                runs["lean"].append(service_ms(
                    url_of(names["lean"]), n_trials=args.trials, name=names["lean"],
                    profile=profile if i == 0 else None, artifacts=False))
            result[label] = {"bare_ms": round(min(runs["bare"]), 2),
                             "bare_heartbeat_ms": round(min(runs["bare_hb"]), 2),
                             "service_storage_ms": round(min(runs["storage"]), 2),
                             "service_ms": round(min(runs["service"]), 2),
                             "service_without_artifacts_ms": round(min(runs["lean"]), 2),
                             # the same comparison, robust to the machine's drift: each
                             # repeat's service time over the bare time measured beside it
                             "service_ratio_median": round(statistics.median(
                                 s / b for s, b in zip(runs["service"], runs["bare"],
                                                       strict=True)), 3),
                             "service_vs_heartbeat_median": round(statistics.median(
                                 s / b for s, b in zip(runs["service"], runs["bare_hb"],
                                                       strict=True)), 3)}
        if args.demo_trials:
            gc.unfreeze()  # the worker freezes the heap itself (or not, for the second run)
            result["demo_trial"] = {}
            for label, url_of in backends.items():
                if label not in args.demo_backends.split(","):
                    continue
                demo = demo_trial(url_of("demo"), n_trials=args.demo_trials, tmp=Path(tmp))
                demo["without_gc_freeze_pct"] = demo_trial(
                    url_of("demo_nofreeze"), n_trials=args.demo_trials, tmp=Path(tmp),
                    freeze=False)["overhead_pct"]
                result["demo_trial"][label] = demo
        if not args.skip_workers:
            url = pg or sqlite_url("workers")
            result["workers_storage"] = "postgres" if pg else "sqlite"
            for key, artifacts in (("workers", True), ("workers_without_artifacts", False)):
                result[key] = {
                    str(n): round(workers_throughput(
                        url, n, trials_per_worker=args.worker_trials, tmp=Path(tmp),
                        artifacts=artifacts), 3)
                    for n in WORKER_COUNTS}
            if pg:  # the embedded default as well: N processes on one SQLite file
                result["workers_sqlite"] = {
                    str(n): round(workers_throughput(
                        sqlite_url("workers_sqlite"), n, trials_per_worker=args.worker_trials,
                        tmp=Path(tmp)), 3)
                    for n in WORKER_COUNTS}

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"ms per trial, best of {args.repeats} interleaved runs of {args.trials} trials "
          "(ratio to bare Optuna)")
    columns = (("bare_heartbeat_ms", "optuna+heartbeats"), ("service_storage_ms",
               "service storage"), ("service_without_artifacts_ms", "service w/o artifacts"),
               ("service_ms", "service"))
    print(f"{'storage':<10} {'bare':>8}" + "".join(f" {title:>22}" for _, title in columns)
          + f" {'service - bare':>15} {'median ratio':>13} {'vs optuna+hb':>13}")
    for label in ("sqlite", "postgres"):
        if label in result:
            row = result[label]
            bare = row["bare_ms"]
            cells = [f"{row[k]:.1f} ({row[k] / bare:.2f}x)" for k, _ in columns]
            print(f"{label:<10} {bare:>8.1f}" + "".join(f" {c:>22}" for c in cells)
                  + f" {row['service_ms'] - bare:>12.1f} ms"
                  + f" {row['service_ratio_median']:>12.2f}x"
                  + f" {row['service_vs_heartbeat_median']:>12.2f}x")
    for label, demo in result.get("demo_trial", {}).items():
        print(f"\ndemo trial ({label}): {demo['trial_s']:.1f} s per trial, "
              f"{demo['train_s']:.1f} s in train; service outside train "
              f"{demo['overhead_ms']:.0f} ms = {demo['overhead_pct']:.2f} % "
              f"(without gc.freeze: {demo['without_gc_freeze_pct']:.2f} %)")
    for key in ("workers", "workers_without_artifacts", "workers_sqlite"):
        if key in result:
            w = result[key]
            where = "sqlite" if key == "workers_sqlite" else result["workers_storage"]
            print(f"\n{key} ({where}, {SLEEP_S} s objective): "
                  + ", ".join(f"{n}: {v:.2f} trials/s" for n, v in w.items())
                  + f"; 4 vs 1: {w['4'] / w['1']:.2f}x")
    print(f"\nwritten: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
