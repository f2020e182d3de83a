"""Timings of the vectorised building blocks on full-size inputs, each beside a plain loop.

Run from the repository root:

    python -m scripts.bench_components              # ~1 minute on 2 CPU cores

* ``panel_metrics``: RankIC, Sharpe and the rest over 750 dates x 4,000 stocks (1% NaN),
  beside the per-date loop a reader would write first (``scipy.stats.spearmanr`` per date).
* ``build_graphs``: the rolling-correlation peer graphs of 750 dates x 500 stocks (the
  ATFT-GAT flagship's size; absolute time only).
* ``generate_market``: the synthetic 500 x 750 market panel (absolute time only).

Each row is the median of ``--repeats`` wall-clock runs (and the process CPU time, all threads,
which moves less on a shared machine). Writes ``output/bench/components.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO))

from trainers.atft_gat.graph import GraphConfig, build_graphs  # noqa: E402
from trainers.atft_gat.synthetic import generate_market  # noqa: E402
from trainers.metrics import panel_metrics  # noqa: E402


def timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"wall_s": round(statistics.median(walls), 4),
            "cpu_s": round(statistics.median(cpus), 4)}


def metrics_inputs(n_dates: int, n_stocks: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    dates = np.repeat(np.arange(n_dates), n_stocks)
    pred = rng.standard_normal(len(dates))
    target = 0.1 * pred + rng.standard_normal(len(dates))
    pred[rng.random(len(dates)) < 0.01] = np.nan
    return dates, pred, target


def rank_ic_loop(dates: np.ndarray, pred: np.ndarray, target: np.ndarray) -> float:
    """Mean per-date Spearman correlation, one scipy call per date."""
    from scipy import stats

    ics = []
    for d in np.unique(dates):
        rows = dates == d
        p, t = pred[rows], target[rows]
        ok = np.isfinite(p) & np.isfinite(t)
        ics.append(stats.spearmanr(p[ok], t[ok]).statistic)
    return float(np.mean(ics))


def factor_returns(n_dates: int, n_stocks: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    groups = np.arange(n_stocks) % 3
    common = rng.standard_normal((n_dates, 3))[:, groups]
    return (common + 1.2 * rng.standard_normal((n_dates, n_stocks))) * 0.01


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.bench_components", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="runs per row; the median is kept")
    p.add_argument("--output", type=Path, default=Path("output/bench/components.json"))
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")

    dates, pred, target = metrics_inputs(750, 4000)
    ours = panel_metrics(dates, pred, target)["rank_ic"]
    loop = rank_ic_loop(dates, pred, target)
    if abs(ours - loop) > 1e-9:
        raise SystemExit(f"rank_ic differs from the loop: {ours} vs {loop}")
    returns = factor_returns(750, 500)
    cfg = GraphConfig()
    rows = {
        "panel_metrics": timed(lambda: panel_metrics(dates, pred, target), args.repeats),
        "panel_metrics_loop": timed(lambda: rank_ic_loop(dates, pred, target), args.repeats),
        "build_graphs": timed(lambda: build_graphs(returns, cfg), args.repeats),
        "generate_market": timed(lambda: generate_market(n_stocks=500, n_dates=750),
                                 args.repeats),
    }
    result = {"rows": rows, "shapes": {"panel_metrics": [750, 4000], "build_graphs": [750, 500],
                                       "generate_market": [750, 500]},
              "speedup": {
                  "panel_metrics_vs_loop": round(rows["panel_metrics_loop"]["wall_s"]
                                                 / rows["panel_metrics"]["wall_s"], 2)}}
    print(f"{'component':<22} {'wall s':>8} {'cpu s':>8}")
    for name, row in rows.items():
        print(f"{name:<22} {row['wall_s']:>8.3f} {row['cpu_s']:>8.3f}")
    for name, ratio in result["speedup"].items():
        print(f"{name}: {ratio:.1f}x")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
