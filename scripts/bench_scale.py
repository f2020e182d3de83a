"""The flagship at the seed's size: 4,000 stocks x 2,500 dates x 300 features, end to end.

    python -m scripts.bench_scale                      # the seed's size (~12 GB of features)
    python -m scripts.bench_scale --stocks 500 --dates 400 --features 60   # a quick look

Steps, each in a fresh process so its memory is its own:

1. **Generate** a panel with the shape of a real one and stream it to parquet in row groups
   (never whole in memory): stocks in 40 sectors (a market factor plus a sector factor, so the
   correlation graph has real structure), 20 % of stocks listing late and 10 % delisting early,
   2 % of feature values missing at random, ``f_ret_1d_past`` (yesterday's return, the graph's
   source), a few weak signal features and noise. Kept under ``--data-dir`` for the next run.
2. **Read** the parquet's feature columns batch by batch (the floor a build cannot beat),
   from a cold page cache (the file's pages are dropped first with ``posix_fadvise``, no
   root needed), then again warm.
3. **Build** the feature cache (``cache.build_cache``) from a cold page cache too, as a user
   builds from a freshly exported or copied panel: hashing the source is part of the build.
4. **Train**: the real ATFT-GAT-FAN recipe (``trainers.atft_gat.train``), one epoch of
   ``--steps`` steps (one date per step) and one full validation pass over the validation
   period (20 % of the dates); the trainer builds the correlation graph on the way.

Memory: ``peak_rss`` is the process's high-water resident set (file pages it touched count);
``peak_anon`` samples ``RssAnon`` (private memory: what the process holds beyond the page
cache) every 20 ms; both are reported as growth over the process's state after imports.
Writes ``output/bench/scale.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

GB = 1e9
OUT = Path("output/bench/scale.json")
N_SECTORS = 40
MISSING_RATE = 0.02
DATES_PER_ROW_GROUP = 8
N_SIGNALS = 4  # weak signal features; the rest is noise
SIGNAL_STRENGTH = 0.06  # loading of the next-day return in a signal feature (RankIC ~0.03)


# -- memory probes (run inside each child) ---------------------------------------------------
def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class MemoryProbe:
    """Baseline at start; peak RssAnon sampled in a thread; VmHWM for the peak RSS."""

    def __init__(self) -> None:
        self.base_anon = _status("RssAnon")
        self.base_rss = _status("VmRSS")
        self.peak_anon = self.base_anon
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_anon = max(self.peak_anon, _status("RssAnon"))

    def finish(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self.peak_anon = max(self.peak_anon, _status("RssAnon"))
        return {"peak_rss_gb": (_status("VmHWM") - self.base_rss) / GB,
                "peak_anon_gb": (self.peak_anon - self.base_anon) / GB}


# -- 1. the panel ----------------------------------------------------------------------------
def generate(path: Path, *, stocks: int, dates: int, features: int, seed: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    sector = rng.integers(0, N_SECTORS, stocks)
    market = rng.standard_normal(dates) * 0.008
    sector_ret = rng.standard_normal((dates, N_SECTORS)) * 0.012
    idio = rng.standard_normal((dates, stocks)) * 0.015
    ret = market[:, None] + sector_ret[:, sector] + idio  # (D, S) ret_1d of date t -> t+1
    first = np.where(rng.random(stocks) < 0.2, rng.integers(0, dates // 3, stocks), 0)
    last = np.where(rng.random(stocks) < 0.1, rng.integers(2 * dates // 3, dates, stocks),
                    dates)
    listed = (np.arange(dates)[:, None] >= first) & (np.arange(dates)[:, None] < last)
    day0 = np.datetime64("2015-01-01")
    calendar = np.busday_offset(day0, np.arange(dates), roll="forward")
    codes = np.array([f"S{i:05d}" for i in range(stocks)])
    names = ["f_ret_1d_past", *[f"f_sig_{i}" for i in range(N_SIGNALS)],
             *[f"f_{i:03d}" for i in range(features - 1 - N_SIGNALS)]]
    schema = pa.schema([("date", pa.date32()), ("code", pa.string()),
                        *[(n, pa.float32()) for n in names], ("ret_1d", pa.float32())])
    tmp = path.with_suffix(".partial")
    with pq.ParquetWriter(tmp, schema, compression="snappy") as writer:
        for d0 in range(0, dates, DATES_PER_ROW_GROUP):
            block = np.arange(d0, min(dates, d0 + DATES_PER_ROW_GROUP))
            d_idx, s_idx = np.nonzero(listed[block])
            d_abs = block[d_idx]
            n = len(d_abs)
            x = rng.standard_normal((n, features), dtype=np.float32)  # (n, F) noise
            past = np.where(d_abs > 0, ret[np.maximum(d_abs - 1, 0), s_idx], np.nan)
            x[:, 0] = past
            target = ret[d_abs, s_idx]
            z = target / 0.02
            for k in range(N_SIGNALS):
                x[:, 1 + k] = SIGNAL_STRENGTH * z + x[:, 1 + k]
            x[rng.random((n, features)) < MISSING_RATE] = np.nan
            ret_col = np.where(d_abs < dates - 1, target, np.nan).astype(np.float32)
            columns = [pa.array(calendar[d_abs].astype("datetime64[D]")),
                       pa.array(codes[s_idx]),
                       *[pa.array(x[:, j]) for j in range(features)], pa.array(ret_col)]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
    os.replace(tmp, path)


# -- 2-4. the children -----------------------------------------------------------------------
def evict(path: Path) -> None:
    """Drop the file's clean pages from the page cache, so the next read comes from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def child_read(path: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    probe = MemoryProbe()
    started = time.perf_counter()
    reader = pq.ParquetFile(path)
    names = [n for n in reader.schema_arrow.names if n not in ("date", "code")]
    total = 0
    for group in range(reader.metadata.num_row_groups):  # as the cache build reads it
        for batch in reader.iter_batches(batch_size=65_536, row_groups=[group], columns=names):
            total += batch.num_rows
    return {"read_s": time.perf_counter() - started, "rows": total, **probe.finish()}


def child_build(path: str, cache_root: str) -> dict[str, Any]:
    from cache import CacheSpec, build_cache, open_cache

    probe = MemoryProbe()
    started = time.perf_counter()
    built = build_cache(path, cache_root, CacheSpec(target_columns=("ret_1d",),
                                                     nan_policy="mask"))
    seconds = time.perf_counter() - started
    fc = open_cache(built)
    return {"build_s": seconds, "rows": fc.n_rows, "features": len(fc.feature_names),
            "feature_gb": fc.features.size * 4 / GB, **probe.finish()}


def child_train(path: str, cache_root: str, out_dir: str, steps: int, hidden: int,
                lookback: int, val_fraction: float = 0.2, use_graph: bool = True
                ) -> dict[str, Any]:
    import torch

    from trainers.atft_gat.config import TrainConfig
    from trainers.atft_gat.train import train
    from trainers.context import TrialContext

    torch.set_num_threads(os.cpu_count() or 1)
    probe = MemoryProbe()
    config = TrainConfig(source=path, horizons=(1,), metric_horizon=1, purge=5,
                         val_fraction=val_fraction, test_fraction=0.2, lookback=lookback,
                         hidden_size=hidden, epochs=1, max_steps_per_epoch=steps,
                         batch_size=1, warmup_steps=0, graph_window=60, graph_k=10,
                         graph_source="f_ret_1d_past", cache_dir=cache_root,
                         use_graph=use_graph)
    ctx = TrialContext(Path(out_dir), seed=0, cache_dir=Path(cache_root))
    started = time.perf_counter()
    metrics = train(config, ctx)
    total = time.perf_counter() - started
    epoch = ctx.history[-1]
    return {"train_total_s": total, "graph_s": ctx.attrs["timing"]["graph_s"],
            "setup_s": ctx.attrs["timing"]["setup_s"],
            "first_step_s": ctx.attrs["step_seconds"]["first"],
            "step_s": ctx.attrs["step_seconds"]["median"],
            "steps": ctx.attrs["step_seconds"]["steps"],
            "train_s": epoch["train_s"], "val_s": epoch["val_s"],
            "val_dates": ctx.attrs["data"]["val_dates"],
            "rows_kept_fraction": ctx.attrs["data"]["rows_kept_fraction"],
            "values_missing_fraction": ctx.attrs["data"]["values_missing_fraction"],
            "edges_per_date": ctx.attrs["data"]["edges_per_date"],
            "validation_rank_ic": metrics["rank_ic"], **probe.finish()}


def _in_child(name: str, *args: Any) -> dict[str, Any]:
    """Run ``child_<name>(*args)`` in a fresh interpreter and return its JSON answer."""
    code = (f"import json, sys; from scripts.bench_scale import child_{name} as f; "
            f"print('RESULT' + json.dumps(f(*json.loads(sys.argv[1]))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code, json.dumps(list(args))], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: the {name} step failed:\n{done.stderr[-4000:]}")
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def run(*, stocks: int, dates: int, features: int, steps: int, hidden: int, lookback: int,
        data_dir: Path, seed: int = 0, val_fraction: float = 0.2) -> dict[str, Any]:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"panel_{stocks}x{dates}x{features}_s{seed}.parquet"
    generated_s = 0.0
    if not path.exists():
        started = time.perf_counter()
        generate(path, stocks=stocks, dates=dates, features=features, seed=seed)
        generated_s = time.perf_counter() - started
    cache_root = data_dir / f"cache_{path.stem}"
    import shutil

    shutil.rmtree(cache_root, ignore_errors=True)  # the build is what is measured
    shutil.rmtree(data_dir / "trial", ignore_errors=True)  # a fresh trial, never a resume
    evict(path)
    read = _in_child("read", str(path))
    warm = _in_child("read", str(path))
    evict(path)
    build = _in_child("build", str(path), str(cache_root))
    trained = _in_child("train", str(path), str(cache_root), str(data_dir / "trial"), steps,
                        hidden, lookback, val_fraction)
    feature_gb = build["feature_gb"]
    result = {
        "stocks": stocks, "dates": dates, "rows": build["rows"],
        "features": build["features"], "parquet_gb": path.stat().st_size / GB,
        "generate_s": round(generated_s, 1),
        "read_s": round(read["read_s"], 2), "read_warm_s": round(warm["read_s"], 2),
        "build_s": round(build["build_s"], 2),
        "build_speed_vs_read": round(read["read_s"] / build["build_s"], 3),
        "build_speed_vs_warm_read": round(warm["read_s"] / build["build_s"], 3),
        "build_peak_rss_gb": round(build["peak_rss_gb"], 3),
        "build_peak_anon_gb": round(build["peak_anon_gb"], 3),
        "build_peak_rss_ratio": round(build["peak_rss_gb"] / feature_gb, 4),
        "feature_gb": round(feature_gb, 3),
        "graph_s": trained["graph_s"], "first_step_s": trained["first_step_s"],
        "step_s": trained["step_s"], "steps": trained["steps"],
        "train_epoch_s": trained["train_s"], "val_s": trained["val_s"],
        "val_dates": trained["val_dates"],
        "train_peak_anon_gb": round(trained["peak_anon_gb"], 3),
        "train_peak_rss_gb": round(trained["peak_rss_gb"], 3),
        "rows_kept_fraction": trained["rows_kept_fraction"],
        "values_missing_fraction": trained["values_missing_fraction"],
        "edges_per_date": trained["edges_per_date"],
        "validation_rank_ic": round(trained["validation_rank_ic"], 4),
        "hidden_size": hidden, "lookback": lookback, "val_fraction": val_fraction,
        "cpu_threads": os.cpu_count(),
    }
    return result


TARGETS = (
    ("build_peak_rss_ratio", "<=", 0.25, "cache build peak RSS / feature bytes"),
    ("build_speed_vs_read", ">=", 0.5, "build speed / parquet read speed, both cold"),
    ("train_peak_anon_gb", "<=", 4.0, "training anonymous memory, GB (full size)"),
    ("graph_s", "<=", 300.0, "graph build, s (full size)"),
    ("rows_kept_fraction", ">=", 1.0, "rows with a target that reach the model"),
    ("edges_per_date", ">", 0.0, "graph edges per date"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="The ATFT flagship at the seed's size: generate, read, build, graph, train, "
                    "validate; writes output/bench/scale.json.",
        epilog="example: python -m scripts.bench_scale --stocks 500 --dates 400 --features 60")
    parser.add_argument("--stocks", type=int, default=4000)
    parser.add_argument("--dates", type=int, default=2500)
    parser.add_argument("--features", type=int, default=300)
    parser.add_argument("--steps", type=int, default=5, help="training steps (one date each)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lookback", type=int, default=20)
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of the dates validated (0.2: the full validation period "
                             "of a study; the test period is cut after it either way)")
    parser.add_argument("--data-dir", type=Path, default=Path("output/bench/scale-data"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    result = run(stocks=args.stocks, dates=args.dates, features=args.features,
                 steps=args.steps, hidden=args.hidden, lookback=args.lookback,
                 data_dir=args.data_dir, val_fraction=args.val_fraction)
    full = (args.stocks, args.dates, args.features) == (4000, 2500, 300)
    print(f"panel {args.stocks} stocks x {args.dates} dates x {args.features} features: "
          f"{result['rows']:,} rows, {result['feature_gb']:.2f} GB of float32 features "
          f"({result['parquet_gb']:.2f} GB parquet)")
    for key, value in result.items():
        print(f"  {key:<26} {value}")
    print("targets" + ("" if full else " (the size-dependent ones hold at the full size)"))
    result["targets"] = {}
    for key, op, bound, label in TARGETS:
        value = result[key]
        ok = {"<=": value <= bound, ">=": value >= bound, ">": value > bound}[op]
        result["targets"][key] = {"bound": f"{op} {bound}", "met": bool(ok)}
        print(f"  {'met ' if ok else 'MISS'} {label}: {value} (target {op} {bound})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
