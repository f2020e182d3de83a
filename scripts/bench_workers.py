"""Many workers on one study: direct PostgreSQL against the storage proxy (``hpo.proxy``).

Run from the repository root (PostgreSQL on 127.0.0.1:5432, a role that may create databases):

    python -m scripts.bench_workers                       # 8, 32 and 64 workers, both ways
    python -m scripts.bench_workers --workers 8 --trials-per-worker 4

For each worker count and each way to reach the database, a fresh database and a study of
``trials-per-worker x workers`` trials of a sleep objective (the test workload's quadratic,
``--sleep-s`` per trial, writing the service's usual attrs) run by ``hpo.run --workers N``:
direct (``--storage postgresql+psycopg2://...``) or through ``python -m hpo.proxy``
(``--storage grpc://...``). A sleep keeps N processes on a small machine a test of
coordination, not of CPU. Per run: the exit code, trials/s, p50 and p99 of the time a worker
takes from finishing a trial to starting its next one, the peak number of PostgreSQL
connections to the study's database (``pg_stat_activity``, sampled every 0.2 s), and whether
the target was met exactly (complete trials, none lost: RUNNING or WAITING left, none beyond
the target). The server's connection limit is never raised: where the direct run fails, the
table says so. Prints a table, writes ``output/bench/workers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO))

ADMIN_URL = os.environ.get("HPO_BENCH_PG_ADMIN",
                           "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
STUDY = """
name = "workers"
workload = "tests.hpo.toy_workload"
n_trials = {n_trials}
[[objectives]]
metric = "loss"
direction = "minimize"
[sampler]
name = "random"
seed = 0
[trainer]
epochs = 1
sleep_s = {sleep_s}
[storage]
heartbeat_interval = 5
grace_period = 60
[search_space.lr]
type = "float"
low = 0.01
high = 0.5
"""


def _admin() -> Any:
    import sqlalchemy

    return sqlalchemy.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")


def fresh_database() -> tuple[str, str]:
    import sqlalchemy

    name = f"hpo_bench_workers_{uuid.uuid4().hex[:10]}"
    engine = _admin()
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return name, f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"


def drop_database(name: str) -> None:
    import sqlalchemy

    engine = _admin()
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     "WHERE datname = :n AND pid <> pg_backend_pid()"),
                     {"n": name})
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
    engine.dispose()


class ConnectionSampler:
    """The peak number of connections to one database, sampled in a thread."""

    def __init__(self, database: str, every_s: float = 0.2) -> None:
        self.database, self.every_s, self.peak = database, every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import sqlalchemy

        engine = _admin()
        query = sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :n")
        with engine.connect() as conn:
            while not self._stop.is_set():
                self.peak = max(self.peak, int(conn.execute(query, {"n": self.database})
                                               .scalar() or 0))
                self._stop.wait(self.every_s)
        engine.dispose()

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gaps(trials: list[Any]) -> list[float]:
    """Seconds from a worker finishing a trial to it starting its next one."""
    by_worker: dict[str, list[Any]] = {}
    for t in trials:
        if t.datetime_start and t.datetime_complete and t.user_attrs.get("worker"):
            by_worker.setdefault(t.user_attrs["worker"], []).append(t)
    out = []
    for runs in by_worker.values():
        runs.sort(key=lambda t: t.datetime_start)
        out += [(b.datetime_start - a.datetime_complete).total_seconds()
                for a, b in zip(runs, runs[1:], strict=False)]
    return out


def _pct(values: list[float], q: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(values, q)), 4) if values else None


def run_one(args: argparse.Namespace, workers: int, way: str, work: Path) -> dict[str, Any]:
    import optuna

    name, url = fresh_database()
    folder = work / f"{way}_{workers}"
    folder.mkdir(parents=True, exist_ok=True)
    target = workers * args.trials_per_worker
    study = folder / "workers.toml"
    study.write_text(STUDY.format(n_trials=target, sleep_s=args.sleep_s))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proxy = None
    storage = url
    try:
        if way == "proxy":
            port = _free_port()
            proxy = subprocess.Popen(
                [sys.executable, "-m", "hpo.proxy", "--storage", url, "--port", str(port)],
                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            storage = f"grpc://127.0.0.1:{port}"
            from hpo.storage import open_storage

            open_storage(storage).close()  # waits until it answers
        with ConnectionSampler(name) as sampler:
            started = time.monotonic()
            with open(folder / "run.log", "w") as log:
                done = subprocess.run(
                    [sys.executable, "-m", "hpo.run", "--study", str(study), "--storage",
                     storage, "--output", str(folder / "out"), "--workers", str(workers),
                     "--quiet"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                    timeout=args.timeout_s)
            wall = time.monotonic() - started
        trials = optuna.load_study(study_name="workers", storage=url).get_trials()
        states = [t.state.name for t in trials]
        complete = states.count("COMPLETE")
        left = states.count("RUNNING") + states.count("WAITING")
        log_tail = (folder / "run.log").read_text().strip().splitlines()[-3:]
        return {"workers": workers, "way": way, "exit": done.returncode,
                "seconds": round(wall, 1), "trials": len(trials), "complete": complete,
                "trials_per_s": round(complete / wall, 3) if wall else None,
                "start_gap_p50_s": _pct(gaps(trials), 50),
                "start_gap_p99_s": _pct(gaps(trials), 99),
                "peak_connections": sampler.peak,
                "target_met_exactly": complete == target and left == 0,
                "lost": left, "beyond_target": max(0, complete - target),
                "failed": states.count("FAIL"), "log_tail": log_tail}
    except subprocess.TimeoutExpired:
        return {"workers": workers, "way": way, "exit": None, "timeout_s": args.timeout_s}
    finally:
        if proxy is not None:
            proxy.send_signal(signal.SIGTERM)
            proxy.wait(timeout=30)
        drop_database(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--ways", nargs="+", default=["direct", "proxy"],
                        choices=["direct", "proxy"])
    parser.add_argument("--trials-per-worker", type=int, default=3)
    parser.add_argument("--sleep-s", type=float, default=1.0)
    parser.add_argument("--timeout-s", type=float, default=900)
    parser.add_argument("--work", type=Path, default=Path("output/bench/workers_runs"))
    parser.add_argument("--out", type=Path, default=Path("output/bench"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    print(f"{'workers':>7} {'way':>6} {'exit':>4} {'s':>6} {'trials/s':>8} {'gap p50':>8} "
          f"{'gap p99':>8} {'peak conn':>9} {'target exact':>12}")
    for workers in args.workers:
        for way in args.ways:
            r = run_one(args, workers, way, args.work)
            results.append(r)
            print(f"{workers:>7} {way:>6} {str(r.get('exit')):>4} {r.get('seconds', '-'):>6} "
                  f"{r.get('trials_per_s', '-'):>8} {r.get('start_gap_p50_s', '-'):>8} "
                  f"{r.get('start_gap_p99_s', '-'):>8} {r.get('peak_connections', '-'):>9} "
                  f"{str(r.get('target_met_exactly', '-')):>12}", flush=True)
            (args.out / "workers.json").write_text(json.dumps(
                {"settings": {k: v for k, v in vars(args).items() if k not in ("work", "out")},
                 "runs": results}, indent=1, default=str) + "\n")
    print(f"\nwrote {args.out / 'workers.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
