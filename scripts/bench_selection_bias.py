"""Selection bias: how much of the validation-best trial's Sharpe survives the test period?

Run from the repository root:

    python -m scripts.bench_selection_bias                    # 12 trials, CPU-sized
    python -m scripts.bench_selection_bias --n-trials 24 --n-stocks 200 --n-dates 1000

It runs a fresh single-objective study (maximise validation Sharpe, TPE) of ``--n-trials``
ATFT-GAT-FAN trials on the calibrated synthetic market (``market_difficulty = "realistic"``)
through ``hpo.run``, which opens the held-out test period with ``hpo.evaluate`` when the study
reaches its target. From that report it takes, for the validation-best trial: its validation
Sharpe, its test Sharpe and the gap between them; the oracle's and the best single raw
feature's test Sharpe on the same dates; and the deflated Sharpe ratio of the validation
Sharpe given the trials searched. Standard errors: the report's moving-block bootstrap.

Prints a table and writes ``output/bench/selection_bias.json`` (keys ``n_trials,
val_sharpe_best, test_sharpe_best, oracle_test_sharpe, best_feature_test_sharpe,
deflated_sharpe`` and the settings and extra figures beside them). The study itself lives in
``--workdir`` (deleted first, so each run is a fresh study).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO))

# The study: cheap per trial (one small model, one graph epoch), so that a dozen trials fit in
# ~15 minutes of a 2-core machine; the search space holds only settings that do not change
# the cost of a trial, so trial times stay comparable.
STUDY = """
name = "selection_bias"
description = "bench_selection_bias: validation-best trial vs the held-out test period"
workload = "atft_gat"
n_trials = {n_trials}
[[objectives]]
metric = "sharpe"
direction = "maximize"
[sampler]
name = "tpe"
seed = {seed}
n_startup_trials = {startup}
[storage]
heartbeat_interval = 30
grace_period = 600
[data]
source = "synthetic"
n_stocks = {n_stocks}
n_dates = {n_dates}
market_seed = {market_seed}
market_difficulty = "realistic"
val_fraction = 0.2
test_fraction = 0.2
purge = 20
[trainer]
epochs = {epochs}
max_steps_per_epoch = {steps}
batch_size = {batch_size}
hidden_size = 16
attn_heads = 2
gat_heads = 2
gat_layers = 1
lookback = 10
graph_k = 6
warmup_steps = 5
[search_space.lr]
type = "float"
low = 3e-4
high = 1e-2
log = true
[search_space.dropout]
type = "float"
low = 0.0
high = 0.3
[search_space.edge_dropout]
type = "float"
low = 0.0
high = 0.6
[search_space.rank_weight]
type = "float"
low = 0.0
high = 1.0
[search_space.ic_weight]
type = "float"
low = 0.0
high = 0.5
[search_space.weight_decay]
type = "float"
low = 1e-6
high = 1e-2
log = true
[search_space.fan_top_k]
type = "int"
low = 1
high = 3
"""
MIN_TRIALS = 12  # fewer, and the validation-best trial is barely selected at all


def _value(figure: dict[str, Any] | None) -> float | None:
    return None if figure is None else figure.get("value")


def figures(report: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's figures from a test report (the chosen trial is the validation-best)."""
    best = next(t for t in report["trials"] if t["chosen"])
    base = report["baselines"]
    val_sharpe = best["validation"]["sharpe"]["value"]
    test_sharpe = best["test"]["sharpe"]["value"]
    feature = base["test"]["best_feature"]
    return {
        "n_trials": report["deflated_sharpe"]["n_trials"],
        "best_trial": best["number"],
        "val_sharpe_best": val_sharpe,
        "val_sharpe_best_se": best["validation"]["sharpe"]["se"],
        "test_sharpe_best": test_sharpe,
        "test_sharpe_best_se": best["test"]["sharpe"]["se"],
        "gap": val_sharpe - test_sharpe,
        "val_rank_ic_best": best["validation"]["rank_ic"]["value"],
        "test_rank_ic_best": best["test"]["rank_ic"]["value"],
        "oracle_val_sharpe": base["validation"]["oracle"]["sharpe"],
        "oracle_test_sharpe": base["test"]["oracle"]["sharpe"],
        "oracle_test_rank_ic": base["test"]["oracle"]["rank_ic"],
        "best_feature": f"{feature['sign']:+.0f} {feature['name']}",
        "best_feature_val_sharpe": base["validation"]["best_feature"]["sharpe"],
        "best_feature_test_sharpe": feature["sharpe"],
        "best_feature_test_rank_ic": feature["rank_ic"],
        "deflated_sharpe": report["deflated_sharpe"]["value"],
        "expected_max_sharpe_by_luck": report["deflated_sharpe"]["expected_max_sharpe"],
        "validation_sharpe_sd_across_trials": report["deflated_sharpe"]["sharpe_variance"] ** 0.5,
        "test_psr": report["test_psr"]["value"],
        "validation_dates": report["validation_dates"],
        "test_dates": report["test_dates"],
        "standard_errors": report["standard_errors"],
    }


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=MIN_TRIALS)
    parser.add_argument("--n-stocks", type=int, default=100)
    parser.add_argument("--n-dates", type=int, default=600)
    parser.add_argument("--market-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="max steps per epoch")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument("--workdir", type=Path, default=Path("output/bench/selection_bias_study"))
    parser.add_argument("--out", type=Path, default=Path("output/bench"))
    args = parser.parse_args(argv)
    if args.n_trials < 2:
        parser.error("--n-trials must be >= 2 (the deflated Sharpe needs a variance); the "
                     f"README figures use >= {MIN_TRIALS}")

    from hpo.evaluate import evaluate_study
    from hpo.loading import load_existing_study, open_existing_storage
    from hpo.run import main as run_main

    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    study_path = args.workdir / "selection_bias.toml"
    study_path.write_text(STUDY.format(
        n_trials=args.n_trials, seed=args.seed, startup=max(2, args.n_trials // 3),
        n_stocks=args.n_stocks, n_dates=args.n_dates, market_seed=args.market_seed,
        epochs=args.epochs, steps=args.steps, batch_size=args.batch_size))
    output = args.workdir / "out"
    url = f"sqlite:///{output / 'hpo.db'}"
    started = time.perf_counter()
    code = run_main(["--study", str(study_path), "--output", str(output), "--storage", url])
    elapsed = time.perf_counter() - started
    if code != 0:
        print(f"error: the study ended with exit code {code}", file=sys.stderr)
        return code
    study = load_existing_study(open_existing_storage(url), "selection_bias", url)
    report = evaluate_study(study, output=output).report  # written by hpo.run already
    result = {**figures(report),
              "settings": {"n_stocks": args.n_stocks, "n_dates": args.n_dates,
                           "market_seed": args.market_seed, "market_difficulty": "realistic",
                           "epochs": args.epochs, "max_steps_per_epoch": args.steps,
                           "batch_size": args.batch_size, "sampler": "tpe",
                           "sampler_seed": args.seed},
              "study_seconds": round(elapsed, 1)}
    rows = [("trials searched", result["n_trials"]),
            ("validation Sharpe, validation-best trial",
             f"{_fmt(result['val_sharpe_best'])} ± {_fmt(result['val_sharpe_best_se'])}"),
            ("test Sharpe, same trial",
             f"{_fmt(result['test_sharpe_best'])} ± {_fmt(result['test_sharpe_best_se'])}"),
            ("gap (validation - test)", _fmt(result["gap"])),
            ("oracle test Sharpe", _fmt(result["oracle_test_sharpe"])),
            (f"best raw feature ({result['best_feature']}) test Sharpe",
             _fmt(result["best_feature_test_sharpe"])),
            ("deflated Sharpe ratio (validation Sharpe)", _fmt(result["deflated_sharpe"])),
            ("PSR of the test Sharpe vs 0", _fmt(result["test_psr"])),
            ("study wall time (s)", _fmt(result["study_seconds"]))]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "selection_bias.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
