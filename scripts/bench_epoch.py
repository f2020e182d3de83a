"""Where one ATFT-GAT-FAN epoch spends its time: data, graph, batches, model, validation.

Trains one epoch on a 500-stock x 750-date synthetic market twice: cold (the feature cache and
the correlation graphs are built) and warm (both are memory-mapped from the cache, as every
trial after the first sees them). Non-compute time is everything outside the model's steps:
loading data, building graphs and assembling batches. Prints a table and writes
``output/bench/epoch.json``.

    python scripts/bench_epoch.py                      # 500 x 750, CPU
    python scripts/bench_epoch.py --device cuda --hidden 128
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainers.atft_gat.config import TrainConfig  # noqa: E402
from trainers.atft_gat.train import train  # noqa: E402
from trainers.context import TrialContext  # noqa: E402


def one_epoch(config: TrainConfig, out: Path, cache: Path) -> dict[str, float]:
    ctx = TrialContext(out, seed=0, cache_dir=cache)
    started = time.perf_counter()
    train(config, ctx)
    total = time.perf_counter() - started
    timing, epoch = ctx.attrs["timing"], ctx.history[-1]
    data_s, graph_s = timing["data_s"], timing["graph_s"]
    train_s, batch_s, val_s = epoch["train_s"], epoch["batch_s"], epoch["val_s"]
    epoch_s = data_s + graph_s + train_s + val_s
    return {
        "data_s": round(data_s, 3),
        "graph_s": round(graph_s, 3),
        "train_s": round(train_s, 3),
        "batch_s": round(batch_s, 3),
        "val_s": round(val_s, 3),
        "non_compute_fraction": round((data_s + graph_s + batch_s) / epoch_s, 4),
        "samples_per_s": round(epoch["samples"] / train_s, 1),
        "wall_s": round(total, 3),
    }


def reporter_cost(steps: int = 200_000) -> float:
    """Seconds per ``advance`` of an enabled progress reporter printing plain lines (the path
    of logs and pipes; its line every 30 s is not in the loop's cost)."""
    from trainers.progress import Reporter

    phase = Reporter(bars=False, every_s=3600.0).phase("train", total=steps, unit="steps")
    started = time.perf_counter()
    for _ in range(steps):
        phase.advance()
    return (time.perf_counter() - started) / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stocks", type=int, default=500)
    p.add_argument("--dates", type=int, default=750)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("output/bench/epoch.json"))
    args = p.parse_args(argv)
    config = TrainConfig(n_stocks=args.stocks, n_dates=args.dates, epochs=1,
                         hidden_size=args.hidden, batch_size=args.stocks, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        cold = one_epoch(config, Path(tmp) / "cold", Path(tmp) / "cache")
        warm = one_epoch(config, Path(tmp) / "warm", Path(tmp) / "cache")
    print(f"{'':6s} " + " ".join(f"{k:>12s}" for k in warm))
    for name, row in (("cold", cold), ("warm", warm)):
        print(f"{name:6s} " + " ".join(f"{v:12.3f}" for v in row.values()))
    # The progress reporter's cost per training step, beside the step itself (target <= 1%).
    advance_s = reporter_cost()
    steps = max(1, round(warm["train_s"] * warm["samples_per_s"] / args.stocks))  # batch = stocks
    step_s = warm["train_s"] / steps
    progress = {"advance_us": round(advance_s * 1e6, 3), "step_ms": round(step_s * 1e3, 3),
                "fraction_of_step": advance_s / step_s}
    print(f"progress reporter: {progress['advance_us']:.2f} us per step against a "
          f"{progress['step_ms']:.1f} ms step ({progress['fraction_of_step']:.5%})")
    report = {**warm, "cold": cold, "progress": progress,
              "settings": vars(args) | {"out": str(args.out)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
