"""Peak memory and time of one ATFT-GAT training step on one date's cross-section.

Run from the repository root:

    python -m scripts.bench_model_memory                 # ~3 minutes on 2 CPU cores

Each row runs in a fresh subprocess: the model (default ModelConfig: FAN, variable selection,
LSTM + attention, 2 GAT layers, graph features) is built, inputs of N stocks x lookback x
features and a random graph with k in-edges per stock are made, a tiny warm-up step runs, the
peak-RSS counter is reset
(``/proc/self/clear_refs``), and one forward + backward runs. The row reports the growth of the
process's peak RSS (``VmHWM``) over that step, and the step's wall time. Variable selection
with TFT's per-feature GRNs (``vsn_per_feature_grn``) cannot run a 4,000-stock date on this
kind of machine, so it is measured on fewer stocks and extrapolated linearly in N (memory is
linear in the stocks of a date).

Writes ``output/bench/model_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO))


def vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def one_step(stocks: int, features: int, lookback: int, hidden: int, k: int,
             per_feature_grn: bool, threads: int) -> dict[str, float]:
    """Runs in the child process: one forward + backward, peak RSS growth and time."""
    import torch

    torch.set_num_threads(threads)
    from trainers.atft_gat.model import ATFTGATFAN, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=hidden, lookback=lookback, vsn_per_feature_grn=per_feature_grn)
    model = ATFTGATFAN(cfg, n_features=features).train()
    x = torch.randn(stocks, lookback, features)
    dst = torch.arange(stocks).repeat_interleave(k)
    src = (dst + torch.randint(1, stocks, (stocks * k,))) % stocks  # no self-loops
    edges, weight = torch.stack([src, dst]), torch.rand(stocks * k) * 0.7 + 0.3
    model(x[:8]).get("point").sum().backward()  # warm-up: kernels and lazy inits, not timed
    model.zero_grad(set_to_none=True)
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    base = vm_kb("VmRSS")
    wall = time.perf_counter()
    out = model(x, edges, weight)
    loss = out["point"].square().mean() + out["quantiles"].square().mean()
    loss.backward()
    wall = time.perf_counter() - wall
    return {"peak_growth_gb": round((vm_kb("VmHWM") - base) / 2**20, 3),
            "step_s": round(wall, 2)}


def run_row(**row: object) -> dict[str, object]:
    code = ("import json, sys; from scripts.bench_model_memory import one_step; "
            f"print(json.dumps(one_step(**{row!r})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=False)
    if done.returncode:
        return {**row, "error": done.stderr.strip().splitlines()[-1]}
    return {**row, **json.loads(done.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.bench_model_memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stocks", type=int, default=4000)
    p.add_argument("--features", type=int, default=300)
    p.add_argument("--lookback", type=int, default=20)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--k", type=int, default=10, help="in-edges per stock")
    p.add_argument("--tft-stocks", type=int, nargs="+", default=[50, 100],
                   help="stocks for the per-feature-GRN rows (then extrapolated)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per step (on a busy 2-core machine, 2 threads measured "
                        "up to 100x slower than 1: OpenMP workers wait on each other)")
    p.add_argument("--output", type=Path, default=Path("output/bench/model_memory.json"))
    args = p.parse_args(argv)
    common = {"features": args.features, "lookback": args.lookback, "hidden": args.hidden,
              "k": args.k, "threads": args.threads}
    rows = [run_row(stocks=n, per_feature_grn=True, **common) for n in args.tft_stocks]
    rows += [run_row(stocks=n, per_feature_grn=False, **common)
             for n in sorted({max(args.tft_stocks), args.stocks // 4, args.stocks})]
    tft = [r for r in rows if r["per_feature_grn"] and "error" not in r]
    if len(tft) >= 2:  # linear in N through the two largest measured sizes
        a, b = tft[-2], tft[-1]
        slope = (b["peak_growth_gb"] - a["peak_growth_gb"]) / (b["stocks"] - a["stocks"])
        rows.append({"stocks": args.stocks, "per_feature_grn": True, **common,
                     "peak_growth_gb": round(b["peak_growth_gb"]
                                             + slope * (args.stocks - b["stocks"]), 1),
                     "extrapolated": True})
    print(f"{'vsn':<12} {'stocks':>7} {'peak GB':>9} {'step s':>8}")
    for r in rows:
        name = "per-feature" if r["per_feature_grn"] else "shared"
        peak = r.get("peak_growth_gb", r.get("error"))
        step = r.get("step_s", "-")
        print(f"{name:<12} {r['stocks']:>7} {peak!s:>9} {step!s:>8}"
              + ("  (extrapolated)" if r.get("extrapolated") else ""))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
