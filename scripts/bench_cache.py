"""Benchmark: from opening a file to a float32 torch tensor of all features, read once.

    python scripts/bench_cache.py                      # 1,000 dates x 1,000 stocks x 100 features
    python scripts/bench_cache.py --rows 200000 --csv-runs 0

The panel is complete (every stock every date) and its files are sorted by (date, code), so
every path can produce the (dates, stocks, features) block training reads. Each path is timed
from "open the file" to "a (D, S, F) float32 torch tensor whose every element has been read"
(its sum), warm (one untimed run first, the files in the page cache), median of ``--runs``:

    csv               polars read_csv -> DataFrame.to_numpy(order="c") -> reshape (D, S, F)
    parquet(_zstd)    polars read_parquet, same conversion (uncompressed / zstd files)
    cache             cache.open_cache -> FeatureCache.features_torch(): the (D, S, F) view
                      onto the memory map (dates at the file's batch stride), no copy
    cache_copy        the same view materialised: .contiguous(), one copy out of the map
    memcpy            numpy copy of the same bytes already in memory: into a fresh array
                      (memcpy_gbps) and into an existing one (memcpy_reuse_gbps)

The file readers' reshape is free only because the panel is complete and sorted; a panel
whose stocks list and delist would need a scatter on top (what the cache build does once).
GB/s = dates x stocks x features x 4 bytes / seconds. The copy figures are the ceiling a
loader that must produce its own array can reach; the cache view does not copy at all.
The cache's (streamed, two-pass) build time is reported too, from its manifest.

Second benchmark, sharing: ``--procs`` processes each open the same data and read all of it
into a tensor they keep. Memory growth = the sum over the processes of the growth of their
PSS (proportional set size, /proc/<pid>/smaps_rollup) from "imports done" to "tensor read".
PSS charges a page shared by k processes 1/k to each, so the sum counts a page cache page
mapped by all readers once, and each private copy in full. The ratio is growth / one copy
of the feature bytes: ~1 for a memory map shared through the page cache, ~procs for readers
that each decode their own copy. The fall in MemAvailable is recorded too, but other work on
the machine moves it, so PSS is the figure reported.

Results: a table on stdout and ``output/bench/cache.json``. Data goes to a temp directory.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(REPO))

TARGETS = ("ret_1d", "ret_5d", "ret_10d", "ret_20d")
STOCKS = 1000  # the panel is (rows / STOCKS) dates x STOCKS stocks


# -- the data ------------------------------------------------------------------------------
def make_files(workdir: Path, *, rows: int, features: int, with_csv: bool) -> dict[str, Path]:
    import datetime as dt

    import polars as pl

    from cache import CacheSpec, build_cache

    n_dates = max(1, rows // STOCKS)
    rows = n_dates * STOCKS
    rng = np.random.default_rng(0)
    start = dt.date(2000, 1, 3)
    frame = pl.DataFrame({
        "date": np.repeat(np.array([start + dt.timedelta(days=i) for i in range(n_dates)],
                                   dtype="datetime64[D]"), STOCKS),
        "code": [f"{i:05d}" for i in range(STOCKS)] * n_dates,
        **{f"f{j:03d}": rng.standard_normal(rows, dtype=np.float32) for j in range(features)},
        **{t: rng.standard_normal(rows, dtype=np.float32) * 0.01 for t in TARGETS},
    })
    paths = {"parquet": workdir / "panel.parquet", "parquet_zstd": workdir / "panel_zstd.parquet"}
    frame.write_parquet(paths["parquet"], compression="uncompressed")
    frame.write_parquet(paths["parquet_zstd"], compression="zstd")
    if with_csv:
        paths["csv"] = workdir / "panel.csv"
        frame.write_csv(paths["csv"])
    paths["cache"] = build_cache(frame, workdir / "caches", CacheSpec(), source_id="bench")
    return paths


# -- one read of each kind: file -> (dates, stocks, features) float32 tensor, summed --------
def feature_names(features: int) -> list[str]:
    return [f"f{j:03d}" for j in range(features)]


def read_polars(path: Path, kind: str, features: int) -> torch.Tensor:
    """(D, S, F): the file's rows are (date, code) sorted and complete, so a reshape."""
    import polars as pl
    import torch

    names = feature_names(features)
    if kind == "csv":
        df = pl.read_csv(path, columns=names, schema_overrides={n: pl.Float32 for n in names})
    else:
        df = pl.read_parquet(path, columns=names)
    matrix = df.to_numpy(order="c")  # (rows, features) float32, row-major: one copy
    del df
    return torch.from_numpy(matrix.reshape(-1, STOCKS, features))  # (D, S, F), a view


def read_cache(path: Path) -> torch.Tensor:
    """(D, S, F) view onto the map: strides (batch stride, F, 1) elements, no copy."""
    from cache import open_cache

    return open_cache(path).features_torch()


def read_cache_copy(path: Path) -> torch.Tensor:
    """The view materialised as a C-contiguous (D, S, F) tensor: one copy out of the map."""
    return read_cache(path).contiguous()


def timed(make: Callable[[], object], *, runs: int, check: Callable[[object], float],
          ) -> tuple[float, float]:
    """(median seconds over ``runs`` after one untimed warm-up, the checksum)."""
    times, total = [], 0.0
    for i in range(runs + 1):
        gc.collect()
        t0 = time.perf_counter()
        result = make()
        total = check(result)
        elapsed = time.perf_counter() - t0
        del result
        if i:  # the first run warms caches and allocator
            times.append(elapsed)
    return statistics.median(times), total


def time_copies(reference: np.ndarray, *, runs: int) -> tuple[float, float]:
    """Median seconds to copy ``reference`` into a fresh array / into an existing one."""
    fresh, _ = timed(lambda: np.array(reference, copy=True), runs=runs, check=lambda a: 0.0)
    target = np.empty_like(reference)
    reuse, _ = timed(lambda: np.copyto(target, reference), runs=runs, check=lambda a: 0.0)
    return fresh, reuse


def tensor_sum(tensor: torch.Tensor) -> float:
    # float32 sum: it streams at memory speed, where a float64-accumulating sum runs ~15x
    # slower on this CPU and would hide the differences being measured.
    return float(tensor.sum())


# -- sharing: several processes reading at once ----------------------------------------------
def pss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def child(kind: str, path: Path, features: int) -> None:
    """Reader process: import, say ready, read on "go", hold the tensor until "exit"."""
    import polars  # noqa: F401  (imports happen before the "before" measurement)
    import torch  # noqa: F401

    import cache  # noqa: F401

    print("ready", flush=True)
    sys.stdin.readline()
    tensor = read_cache(path) if kind == "cache" else read_polars(path, kind, features)
    print(f"done {tensor_sum(tensor)}", flush=True)
    sys.stdin.readline()


def shared_ratio(kind: str, path: Path, *, procs: int, features: int,
                 copy_bytes: int) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(path),
           "--features", str(features)]
    workers = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for _ in range(procs)]
    try:
        for w in workers:
            assert w.stdout.readline().strip() == "ready"
        before = [pss_bytes(w.pid) for w in workers]
        available_before = mem_available()
        for w in workers:
            w.stdin.write("go\n")
            w.stdin.flush()
        for w in workers:
            assert w.stdout.readline().startswith("done")
        after = [pss_bytes(w.pid) for w in workers]
        available_drop = available_before - mem_available()
        for w in workers:
            w.stdin.write("exit\n")
            w.stdin.flush()
    finally:
        for w in workers:
            w.wait(timeout=120)
    growth = sum(after) - sum(before)
    return {"ratio": growth / copy_bytes, "growth_bytes": growth,
            "mem_available_drop_ratio": available_drop / copy_bytes}


# -- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/bench_cache.py",
        description="Time file -> (dates, stocks, features) float32 torch tensor for CSV, "
        "parquet, the Arrow cache and a plain memcpy; measure memory shared by several "
        "readers.",
        epilog="example: python scripts/bench_cache.py --rows 200000 --csv-runs 0",
    )
    parser.add_argument("--rows", type=int, default=1_000_000,
                        help=f"panel rows, rounded down to whole dates of {STOCKS} stocks "
                        "(default 1e6)")
    parser.add_argument("--features", type=int, default=100, help="feature columns (100)")
    parser.add_argument("--runs", type=int, default=5, help="timed warm runs per path (5)")
    parser.add_argument("--csv-runs", type=int, default=1,
                        help="timed runs for the slow CSV path; 0 skips CSV (default 1)")
    parser.add_argument("--procs", type=int, default=4, help="readers in the sharing test (4)")
    parser.add_argument("--out", type=Path, default=REPO / "output" / "bench" / "cache.json",
                        help="where the JSON results go (default output/bench/cache.json)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], Path(args.child[1]), args.features)
        return 0

    import torch

    workdir = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    try:
        t0 = time.perf_counter()
        paths = make_files(workdir, rows=args.rows, features=args.features,
                           with_csv=args.csv_runs > 0)
        print(f"data written in {time.perf_counter() - t0:.1f} s to {workdir}", flush=True)
        from cache import open_cache

        fc = open_cache(paths["cache"])
        reference = np.array(fc.features)  # (D, S, F), C-contiguous, in RAM
        assert fc.present.all() and reference.shape[1] == STOCKS
        build_seconds = float(fc.manifest["build_seconds"])
        del fc
        n_dates, stocks, features = reference.shape
        rows = n_dates * stocks
        nbytes = reference.nbytes
        print(f"  cache build        {build_seconds * 1e3:9.1f} ms  (streamed, from a frame)",
              flush=True)
        results: dict[str, float] = {}
        checks: dict[str, float] = {}

        def record(name: str, seconds: float, checksum: float) -> None:
            results[name] = nbytes / seconds / 1e9
            checks[name] = checksum
            print(f"  {name:<18} {seconds * 1e3:9.1f} ms  {results[name]:7.2f} GB/s", flush=True)

        fresh, reuse = time_copies(reference, runs=args.runs)
        record("memcpy", fresh, 0.0)
        record("memcpy_reuse", reuse, 0.0)
        record("cache", *timed(lambda: read_cache(paths["cache"]), runs=args.runs,
                               check=tensor_sum))
        record("cache_copy", *timed(lambda: read_cache_copy(paths["cache"]), runs=args.runs,
                                    check=tensor_sum))
        record("parquet", *timed(lambda: read_polars(paths["parquet"], "parquet", features),
                                 runs=args.runs, check=tensor_sum))
        record("parquet_zstd", *timed(
            lambda: read_polars(paths["parquet_zstd"], "parquet", features), runs=args.runs,
            check=tensor_sum))
        if args.csv_runs > 0:
            record("csv", *timed(lambda: read_polars(paths["csv"], "csv", features),
                                 runs=args.csv_runs, check=tensor_sum))
        sums = {k: v for k, v in checks.items() if not k.startswith("memcpy")}
        expected = tensor_sum(torch.from_numpy(reference))
        for name, value in sums.items():  # every path read the same (D, S, F) numbers
            assert abs(value - expected) <= 1e-4 * max(1.0, abs(expected)), (name, value)
        del reference
        gc.collect()

        print(f"sharing: {args.procs} processes reading the same features", flush=True)
        shared = shared_ratio("cache", paths["cache"], procs=args.procs, features=features,
                              copy_bytes=nbytes)
        print(f"  cache    memory growth {shared['ratio']:.2f}x one copy", flush=True)
        shared_pq = shared_ratio("parquet", paths["parquet"], procs=args.procs,
                                 features=features, copy_bytes=nbytes)
        print(f"  parquet  memory growth {shared_pq['ratio']:.2f}x one copy", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    fastest_parquet = max(results["parquet"], results["parquet_zstd"])
    report = {
        "rows": rows,
        "dates": n_dates,
        "stocks": stocks,
        "features": features,
        "cache_build_seconds": build_seconds,
        "bytes": nbytes,
        "runs": args.runs,
        "memcpy_gbps": results["memcpy"],
        "memcpy_reuse_gbps": results["memcpy_reuse"],
        "cache_gbps": results["cache"],
        "cache_copy_gbps": results["cache_copy"],
        "parquet_gbps": results["parquet"],
        "parquet_zstd_gbps": results["parquet_zstd"],
        "csv_gbps": results.get("csv"),
        "cache_vs_memcpy": results["cache"] / results["memcpy"],
        "cache_vs_fastest_parquet": results["cache"] / fastest_parquet,
        "shared_4proc_ratio": shared["ratio"],
        "parquet_4proc_ratio": shared_pq["ratio"],
        "shared_procs": args.procs,
        "shared_method": "sum of per-process PSS growth (/proc/<pid>/smaps_rollup) / bytes "
                         "of one copy",
        "shared_mem_available_drop_ratio": shared["mem_available_drop_ratio"],
        "parquet_mem_available_drop_ratio": shared_pq["mem_available_drop_ratio"],
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    print()
    print(f"{'path':<16}{'GB/s':>8}")
    for name in ("csv", "parquet_zstd", "parquet", "cache_copy", "cache", "memcpy",
                 "memcpy_reuse"):
        if name in results:
            print(f"{name:<16}{results[name]:8.2f}")
    print(f"cache = {report['cache_vs_memcpy']:.2f}x fresh memcpy (target >= 0.5), "
          f"{report['cache_vs_fastest_parquet']:.1f}x fastest parquet (target >= 3)")
    print(f"{args.procs} readers: cache {shared['ratio']:.2f}x one copy (target <= 1.5), "
          f"parquet {shared_pq['ratio']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
