"""Selection bias: how much of the validation-best trial's Sharpe survives the test period?

Run from the repository root:

    python -m scripts.bench_selection_bias                    # 3 markets x 8 trials, CPU-sized
    python -m scripts.bench_selection_bias --market-seeds 0 1 2 3 4 --n-stocks 200 --n-dates 1000

For each market seed it runs a fresh single-objective study (maximise validation Sharpe, TPE)
of ``--n-trials`` ATFT-GAT-FAN trials on the calibrated synthetic market (``market_difficulty
= "realistic"``) through ``hpo.run``, which opens the held-out test period with
``hpo.evaluate`` when the study reaches its target. From that report it takes the
validation-best trial, the oracle and the two baselines a quant tries first (the best single
feature and a ridge fit, both fitted on the training dates), on validation and test, gross and
net of the study's ``cost_bps`` (Sharpe, net Sharpe, RankIC, turnover), and the chosen trial
minus each baseline on test with its paired bootstrap SE; then the differences pooled over the
markets (mean, SE of the mean from the per-market SEs, markets won). A difference under two
SEs is "no difference".

Prints a table per market and the pooled one, and writes ``output/bench/selection_bias.json``
after every market (``settings``, ``markets``, ``pooled``). The studies live in ``--workdir``
(each market's deleted first, so each run is a fresh study).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO))

from scripts import bench_study  # noqa: E402

# The search: the small study's settings (scripts.bench_study) with the graph's and the loss's,
# in the order TPE draws them.
SPACE = {"lr": bench_study.SPACE["lr"], "dropout": bench_study.SPACE["dropout"],
         "edge_dropout": {"type": "float", "low": 0.0, "high": 0.6},
         "rank_weight": bench_study.SPACE["rank_weight"],
         "ic_weight": {"type": "float", "low": 0.0, "high": 0.5},
         "weight_decay": bench_study.SPACE["weight_decay"],
         "fan_top_k": {"type": "int", "low": 1, "high": 3}}
NAME = "selection_bias"
DESCRIPTION = "bench_selection_bias: validation-best trial vs the held-out test period"
# Trials per market by default: few enough that 3 markets fit in ~30 minutes on 2 CPU cores,
# enough that the validation-best trial is selected among several.
DEFAULT_TRIALS = 8
# The figures compared on test, gross and net of costs; turnover is what the cost charges.
COMPARED = ("sharpe", "sharpe_net", "rank_ic", "turnover")
BASELINES = ("best_feature", "linear")


def _value(figure: Any) -> float | None:
    if isinstance(figure, dict):
        return figure.get("value")
    return figure if isinstance(figure, int | float) else None


def _se(figure: Any) -> float | None:
    return figure.get("se") if isinstance(figure, dict) else None


def figures(report: dict[str, Any]) -> dict[str, Any]:
    """One market's figures from its test report (the chosen trial is the validation-best):
    the chosen trial, the oracle and both baselines on validation and test, and the chosen
    trial minus each baseline with its paired SE."""
    best = next(t for t in report["trials"] if t["chosen"])
    base = report["baselines"]
    rows: dict[str, Any] = {"chosen": {p: {m: {"value": _value(best[p].get(m)),
                                               "se": _se(best[p].get(m))} for m in COMPARED}
                                       for p in ("validation", "test")}}
    for name in ("oracle", *BASELINES):
        if base["test"].get(name) is None:
            continue
        rows[name] = {p: {m: {"value": _value(base[p][name].get(m)),
                              "se": _se(base[p][name].get(m))} for m in COMPARED}
                      for p in ("validation", "test")}
    versus = {name: {m: v["test"][m] for m in COMPARED}
              for name, v in (report.get("versus_baselines") or {}).items()}
    return {
        "n_trials": report["deflated_sharpe"]["n_trials"],
        "best_trial": best["number"],
        "best_feature": base["test"]["best_feature"].get("feature"),
        "rows": rows,
        "chosen_minus_baseline_test": versus,
        "best_baseline_on_validation": (report.get("versus_baseline") or {}).get("baseline"),
        "deflated_sharpe": report["deflated_sharpe"]["value"],
        "trials_mean_correlation": report["deflated_sharpe"].get("trials_mean_correlation"),
        "pbo": (report.get("pbo") or {}).get("value"),
        "validation_sharpe_chosen": best["validation"]["sharpe"]["value"],
        "gap": best["validation"]["sharpe"]["value"] - best["test"]["sharpe"]["value"],
        "expected_max_sharpe_by_luck": report["deflated_sharpe"]["expected_max_sharpe"],
        "test_psr": report["test_psr"]["value"],
        "cost_bps": report.get("cost_bps"),
        "validation_dates": report["validation_dates"],
        "test_dates": report["test_dates"],
        "standard_errors": report["standard_errors"],
    }


def _fmt(v: Any, se: Any = None) -> str:
    if not isinstance(v, int | float):
        return "-"
    text = f"{v:+.3f}" if abs(v) < 10 else f"{v:+.1f}"
    return text + (f" ± {se:.3f}" if isinstance(se, int | float) else "")


def verdict(diff: dict[str, Any], metric: str) -> str:
    """Better / worse beyond 2 SEs ("more" / "less" for turnover), else "no difference"."""
    value, se = diff.get("value"), diff.get("se")
    if not isinstance(value, int | float) or not isinstance(se, int | float) or se <= 0:
        return "?"
    up, down = ("more", "less") if metric == "turnover" else ("better", "worse")
    if value >= 2 * se:
        return up
    return down if value <= -2 * se else "no difference"


def study(args: argparse.Namespace, market_seed: int) -> dict[str, Any]:
    """The study of one market, as a mapping (``scripts.bench_study.small_study``)."""
    return bench_study.small_study(NAME, DESCRIPTION, args, space=SPACE,
                                   data=bench_study.synthetic_data(args, market_seed))


def run_market(args: argparse.Namespace, market_seed: int) -> dict[str, Any]:
    """One fresh study on the market of ``market_seed``; its figures (see ``figures``)."""
    from hpo.evaluate import evaluate_study

    found, output, elapsed = bench_study.run_fresh(
        study(args, market_seed), args.workdir / f"market_{market_seed}",
        what=f"market {market_seed}")
    report = evaluate_study(found, output=output).report  # written by hpo.run already
    return {**figures(report), "market_seed": market_seed, "study_seconds": round(elapsed, 1)}


def print_market(result: dict[str, Any]) -> None:
    print(f"\nmarket seed {result['market_seed']} ({result['n_trials']} trials, test "
          f"{result['test_dates']}, costs {result['cost_bps']} bps per unit traded):")
    header = ["", *(f"test {m}" for m in COMPARED)]
    table = [header]
    for name, row in result["rows"].items():
        label = f"{name} ({result['best_feature']})" if name == "best_feature" else name
        table.append([label, *(_fmt(row["test"][m]["value"], row["test"][m]["se"])
                               for m in COMPARED)])
    for name, diff in result["chosen_minus_baseline_test"].items():
        table.append([f"chosen - {name}",
                      *(f"{_fmt(diff[m]['value'], diff[m]['se'])} ({verdict(diff[m], m)})"
                        for m in COMPARED)])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    rho = result.get("trials_mean_correlation")
    pbo = result.get("pbo")
    print(f"  validation Sharpe of the chosen trial {result['validation_sharpe_chosen']:+.3f}, "
          f"gap to test {result['gap']:+.3f}; deflated Sharpe ratio "
          f"{result['deflated_sharpe']:.3f} ({result['n_trials']} trials)"
          + (f", trials' mean return correlation {rho:.2f}" if isinstance(rho, float) else "")
          + (f"; PBO {pbo:.2f}" if isinstance(pbo, float) else "")
          + f"; study {result['study_seconds']:.0f} s")


def pooled(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Across markets: each paired difference's mean and its SE (the per-market SEs combined,
    the markets being independent), and how many markets the chosen trial won."""
    out: dict[str, Any] = {}
    for name in BASELINES:
        diffs = [r["chosen_minus_baseline_test"].get(name) for r in results]
        diffs = [d for d in diffs if d]
        if not diffs:
            continue
        out[name] = {}
        for m in COMPARED:
            values = [d[m]["value"] for d in diffs]
            ses = [d[m]["se"] for d in diffs]
            mean = sum(values) / len(values)
            se = (sum(s * s for s in ses)) ** 0.5 / len(ses)
            out[name][m] = {"mean": mean, "se": se,
                            "verdict": verdict({"value": mean, "se": se}, m),
                            "chosen_ahead": sum(v > 0 for v in values), "markets": len(values)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=DEFAULT_TRIALS)
    parser.add_argument("--n-stocks", type=int, default=100)
    parser.add_argument("--n-dates", type=int, default=500)
    parser.add_argument("--market-seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="one fresh study per synthetic market seed")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="max steps per epoch")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument("--workdir", type=Path, default=Path("output/bench/selection_bias_study"))
    parser.add_argument("--out", type=Path, default=Path("output/bench"))
    args = parser.parse_args(argv)
    if args.n_trials < 2:
        parser.error("--n-trials must be >= 2 (the deflated Sharpe needs a variance)")
    settings = {"n_trials": args.n_trials, "n_stocks": args.n_stocks, "n_dates": args.n_dates,
                "market_difficulty": "realistic", "epochs": args.epochs,
                "max_steps_per_epoch": args.steps, "batch_size": args.batch_size,
                "sampler": "tpe", "sampler_seed": args.seed}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "selection_bias.json"
    results: list[dict[str, Any]] = []
    for market_seed in args.market_seeds:
        results.append(run_market(args, market_seed))
        print_market(results[-1])
        # Written after every market: a long run keeps what it measured.
        path.write_text(json.dumps({"settings": settings, "markets": results,
                                    "pooled": pooled(results)}, indent=1) + "\n")
    print("\npooled over markets, test, chosen minus baseline "
          "(mean ± SE; chosen ahead in k of n):")
    for name, by_metric in pooled(results).items():
        cells = [f"{m} {v['mean']:+.3f} ± {v['se']:.3f} ({v['verdict']}; {v['chosen_ahead']}/"
                 f"{v['markets']})" for m, v in by_metric.items()]
        print(f"  {name}: " + "; ".join(cells))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
