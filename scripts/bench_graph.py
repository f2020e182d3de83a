"""The ATFT-GAT correlation graph at the flagship's size: 4,000 stocks, 2,500 dates.

Run from the repository root:

    python -m scripts.bench_graph                       # ~5 minutes on 2 CPU cores
    python -m scripts.bench_graph --dates 200           # a quick look

Rows (factor-model returns, 2 % missing at random, the default window 60 / threshold 0.3 /
min_periods 20, ``--k`` = the largest graph_k a study samples):

* ``incremental``: ``build_graphs`` as trained (running sums, exact refresh every 64 dates)
  over all ``--dates``; wall and CPU time, ms per date, edges per date, peak RSS growth.
* ``from_scratch``: the same code recomputing the sums every date (``refresh=1``), on the first
  ``--scratch-dates`` dates only: what the incremental update saves.
* ``top_k``: taking every smaller graph_k from the built graph (no rebuild), per k.
* ``drift``: the largest |weight difference| between the incremental and the from-scratch
  graphs of ``--drift-stocks`` stocks over all dates, and the share of edges whose neighbour
  differs (near-equal correlations swapping places).

Writes ``output/bench/graph.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO))

from trainers.atft_gat.graph import DateGraphs, GraphConfig, build_graphs  # noqa: E402


def factor_returns(n_dates: int, n_stocks: int, *, missing: float, seed: int) -> np.ndarray:
    """(D, S) returns of 3 equal sectors plus noise, ``missing`` of them NaN at random."""
    rng = np.random.default_rng(seed)
    groups = np.arange(n_stocks) % 3
    common = rng.standard_normal((n_dates, 3))[:, groups]
    returns = (common + 1.2 * rng.standard_normal((n_dates, n_stocks))) * 0.01
    returns[rng.random(returns.shape) < missing] = np.nan
    return returns


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def timed_build(returns: np.ndarray, cfg: GraphConfig, *, refresh: int
                ) -> tuple[DateGraphs, dict[str, float]]:
    wall, cpu = time.perf_counter(), time.process_time()
    graphs = build_graphs(returns, cfg, refresh=refresh)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    per_date = graphs.edges_per_date()[cfg.window:]  # dates with a full window
    return graphs, {"dates": returns.shape[0], "stocks": returns.shape[1],
                    "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                    "ms_per_date": round(1000 * wall / returns.shape[0], 1),
                    "edges": int(len(graphs.src)),
                    "edges_per_date_min": int(per_date.min()) if len(per_date) else 0,
                    "edges_per_date_mean": round(float(per_date.mean()), 1)
                    if len(per_date) else 0.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.bench_graph", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stocks", type=int, default=4000)
    p.add_argument("--dates", type=int, default=2500)
    p.add_argument("--k", type=int, default=20, help="graph_k_max: the graph built once")
    p.add_argument("--missing", type=float, default=0.02, help="share of returns missing")
    p.add_argument("--scratch-dates", type=int, default=100)
    p.add_argument("--drift-stocks", type=int, default=500)
    p.add_argument("--drift-dates", type=int, default=0, help="0 = --dates")
    p.add_argument("--output", type=Path, default=Path("output/bench/graph.json"))
    args = p.parse_args(argv)
    cfg = GraphConfig(k=args.k)
    result: dict[str, object] = {"config": vars(args) | {"output": str(args.output)},
                                 "load_average_at_start": os.getloadavg()}

    rss0 = peak_rss_gb()
    returns = factor_returns(args.dates, args.stocks, missing=args.missing, seed=5)
    graphs, row = timed_build(returns, cfg, refresh=64)
    row["peak_rss_growth_gb"] = round(peak_rss_gb() - rss0, 2)
    result["incremental"] = row
    print(f"incremental   {row}", flush=True)

    top = {}
    for k in range(1, args.k + 1):
        wall = time.perf_counter()
        smaller = graphs.top(k)
        top[k] = {"wall_s": round(time.perf_counter() - wall, 3), "edges": int(len(smaller.src))}
    result["top_k"] = top
    print(f"top_k         {top[1]} (k=1) ... {top[args.k]} (k={args.k})", flush=True)
    del graphs, smaller

    _, row = timed_build(returns[: args.scratch_dates], cfg, refresh=1)
    result["from_scratch"] = row
    print(f"from_scratch  {row}", flush=True)
    inc = result["incremental"]
    assert isinstance(inc, dict)
    result["from_scratch_vs_incremental_per_date"] = round(
        row["ms_per_date"] / inc["ms_per_date"], 2)

    drift_dates = args.drift_dates or args.dates
    sub = factor_returns(drift_dates, args.drift_stocks, missing=args.missing, seed=6)
    exact = build_graphs(sub, cfg, refresh=1)
    rolled = build_graphs(sub, cfg, refresh=64)
    # Edges are sorted by dst, then weight: with the same counts per (date, dst), the weight
    # sequences align even where near-equal weights swap their src.
    aligned = (np.array_equal(exact.offsets, rolled.offsets)
               and np.array_equal(exact.dst, rolled.dst))
    drift = float(np.abs(exact.weight - rolled.weight).max(initial=0.0)) if aligned else None
    result["drift"] = {"stocks": sub.shape[1], "dates": sub.shape[0],
                       "same_counts_per_dst": aligned, "max_abs_weight_diff": drift,
                       "src_swapped_share": float(np.mean(exact.src != rolled.src))
                       if aligned else None}
    print(f"drift         {result['drift']}", flush=True)
    result["load_average_at_end"] = os.getloadavg()

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
