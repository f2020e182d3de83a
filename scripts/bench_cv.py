"""Selection that survives noise: holdout vs purged walk-forward validation, with and without
fold pruning, on the calibrated synthetic market.

Run from the repository root:

    python -m scripts.bench_cv                        # 3 markets x 8 trials, CPU-sized (~30 min)
    python -m scripts.bench_cv --folds 8              # fold pruning with room to save
    python -m scripts.bench_cv --market-seeds 0 1 2 3 4 5 --n-trials 16 --n-dates 1500

For each market seed, three fresh single-objective studies (maximise validation RankIC) with
the same search space, the same random sampler and seed (so the same configurations in the
same order) and the same test period:

- ``holdout``: one validation block (``val_fraction``);
- ``walk_forward``: ``cv = "walk_forward"``, ``--folds`` folds, no pruning;
- ``walk_forward_pruned``: the same with the ``wilcoxon`` fold pruner.

Per study: the Spearman correlation across its complete trials between the selection score
(the trial's validation RankIC) and the test score (its own model's RankIC on the held-out
test period; for walk-forward the last fold's model, as ``hpo.evaluate`` scores it): the
measure of selection quality; the chosen trial's test RankIC and net Sharpe, and its paired
difference with the best baseline on validation (``hpo.evaluate``'s report); the PBO; the
compute in fold-epochs (model-epochs trained). Between studies of one market: the chosen
trials' test figures paired on the same test dates (walk-forward minus holdout, pruned minus
unpruned). Across markets: medians and the pooled mean difference with its SE.

Opening every trial's test period is the benchmark's job, to measure the selection procedure;
a study itself opens it once, for its chosen trial. Prints a table per market and the pooled
one, writes ``output/bench/cv.json`` after every market. The studies live in ``--workdir``
(deleted first), which is removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO))

from scripts.bench_selection_bias import study as selection_bias_study  # noqa: E402
from scripts.bench_selection_bias import verdict  # noqa: E402
from scripts.bench_study import run_fresh  # noqa: E402

MODES = ("holdout", "walk_forward", "walk_forward_pruned")
DEFAULT_TRIALS = 8


def cv_study(args: argparse.Namespace, *, mode: str, market_seed: int) -> dict[str, Any]:
    """The benchmark's study for ``mode``: bench_selection_bias's study, selecting on
    validation RankIC with the random sampler, and the mode's validation and pruner."""
    raw = selection_bias_study(args, market_seed)
    raw["name"] = f"cv_{mode}"
    raw["objectives"][0]["metric"] = "rank_ic"
    raw["sampler"] = {"name": "random", "seed": args.seed}
    if mode != "holdout":
        raw["data"].update(cv="walk_forward", cv_folds=args.folds)
    if mode == "walk_forward_pruned":
        raw["pruner"] = {"name": "wilcoxon"}
    return raw


def spearman(a: list[float], b: list[float]) -> float:
    from scipy import stats

    if len(a) < 3:
        return math.nan
    return float(stats.spearmanr(a, b).statistic)


def run_study(args: argparse.Namespace, market_seed: int, mode: str) -> dict[str, Any]:
    """One fresh study; its figures and the chosen trial's test rows."""
    from optuna.trial import TrialState

    from hpo.evaluate import evaluate_study
    from hpo.records import trial_attrs
    from hpo.study import trial_dir
    from trainers.registry import get_workload

    study, output, elapsed = run_fresh(
        cv_study(args, mode=mode, market_seed=market_seed),
        args.workdir / f"market_{market_seed}" / mode,
        what=f"the {mode} study of market {market_seed}")
    report = evaluate_study(study, output=output).report  # written by hpo.run already
    heldout = get_workload("atft_gat").heldout
    selection, test, model_epochs, rows = [], [], 0, {}
    for t in study.get_trials(deepcopy=False):
        folds = trial_attrs(t).get("fold_metrics")
        model_epochs += (sum(f["epochs"] for f in folds) if folds
                         else len(trial_attrs(t).get("history") or []))
        if t.state != TrialState.COMPLETE:
            continue
        folder = trial_dir(output, study.study_name, t.number)
        trained = heldout.load(folder)
        frame = heldout.predict(folder, trained, output / "cache").frame
        rows[t.number] = frame
        selection.append(t.value)
        test.append(heldout.score(frame, trained)[0]["rank_ic"]["value"])
    chosen = report["chosen"]
    trial = next(r for r in report["trials"] if r["number"] == chosen)
    versus = report.get("versus_baseline") or {}
    return {
        "mode": mode, "study_seconds": round(elapsed, 1),
        "trials": len(study.trials),
        "complete": sum(t.state == TrialState.COMPLETE for t in study.trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in study.trials),
        "selection_test_spearman": spearman(selection, test),
        "selection": selection, "test": test, "model_epochs": model_epochs,
        "chosen": chosen,
        "chosen_test": {m: trial["test"][m] for m in ("rank_ic", "sharpe_net", "sharpe")},
        # the chosen trial minus the baseline best on validation, on the test dates, paired
        "versus_baseline": {"baseline": versus.get("baseline"),
                            **{m: (versus.get("test") or {}).get(m)
                               for m in ("rank_ic", "sharpe_net")}},
        "pbo": (report.get("pbo") or {}).get("value"),
        "_rows": rows[chosen],
    }


def paired(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Chosen trial of ``a`` minus that of ``b`` on the same test dates, paired SEs."""
    from trainers.heldout import ranking_compare

    diff = ranking_compare(a["_rows"], b["_rows"])
    return {m: {"value": diff[m]["value"], "se": diff[m]["se"]}
            for m in ("rank_ic", "sharpe_net") if m in diff}


def run_market(args: argparse.Namespace, market_seed: int) -> dict[str, Any]:
    studies = {mode: run_study(args, market_seed, mode) for mode in MODES}
    out = {"market_seed": market_seed,
           "studies": {m: {k: v for k, v in s.items() if not k.startswith("_")}
                       for m, s in studies.items()},
           "walk_forward_minus_holdout": paired(studies["walk_forward"], studies["holdout"]),
           "pruned_minus_unpruned": paired(studies["walk_forward_pruned"],
                                           studies["walk_forward"])}
    full = studies["walk_forward"]["model_epochs"]
    out["pruning_saved"] = (1 - studies["walk_forward_pruned"]["model_epochs"] / full
                            if full else None)
    return out


def _f(x: Any, se: Any = None) -> str:
    if isinstance(x, dict):
        x, se = x.get("value"), x.get("se")
    if not isinstance(x, int | float) or not math.isfinite(x):
        return "-"
    return f"{x:+.4f}" + (f" ± {se:.4f}" if isinstance(se, int | float) else "")


def print_market(result: dict[str, Any]) -> None:
    print(f"\nmarket {result['market_seed']}:")
    print(f"  {'mode':<20} {'trials':>6} {'pruned':>6} {'model-epochs':>12} "
          f"{'sel~test rho':>12} {'chosen test rank_ic':>22} {'chosen test sharpe_net':>22}"
          f" {'PBO':>5} {'seconds':>8}")
    for mode, s in result["studies"].items():
        print(f"  {mode:<20} {s['trials']:>6} {s['pruned']:>6} {s['model_epochs']:>12} "
              f"{_f(s['selection_test_spearman']):>12} {_f(s['chosen_test']['rank_ic']):>22} "
              f"{_f(s['chosen_test']['sharpe_net']):>22} "
              f"{s['pbo'] if s['pbo'] is None else round(s['pbo'], 2):>5} "
              f"{s['study_seconds']:>8}")
    for mode, s in result["studies"].items():
        v = s["versus_baseline"]
        if v.get("rank_ic"):
            print(f"  {mode}, chosen minus {v['baseline']} (best baseline on validation) on "
                  f"test: rank_ic {_f(v['rank_ic'])}; sharpe_net {_f(v.get('sharpe_net'))}")
    for key in ("walk_forward_minus_holdout", "pruned_minus_unpruned"):
        d = result[key]
        print(f"  {key}, chosen on test: rank_ic {_f(d.get('rank_ic'))} "
              f"({verdict(d['rank_ic'], 'rank_ic')}); sharpe_net {_f(d.get('sharpe_net'))} "
              f"({verdict(d['sharpe_net'], 'sharpe_net')})")
    if result["pruning_saved"] is not None:
        print(f"  fold pruning saved {result['pruning_saved']:.0%} of the model-epochs")


def pooled(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Across markets: the median selection-test correlation per mode, the pooled paired
    differences (mean, SE from the per-market SEs), the median pruning saving."""
    out: dict[str, Any] = {"median_selection_test_spearman": {}}
    for mode in MODES:
        rhos = [r["studies"][mode]["selection_test_spearman"] for r in results]
        rhos = [x for x in rhos if isinstance(x, float) and math.isfinite(x)]
        out["median_selection_test_spearman"][mode] = statistics.median(rhos) if rhos else None
    for key in ("walk_forward_minus_holdout", "pruned_minus_unpruned"):
        out[key] = {}
        for m in ("rank_ic", "sharpe_net"):
            diffs = [r[key][m] for r in results if m in r[key]]
            if not diffs:
                continue
            mean = sum(d["value"] for d in diffs) / len(diffs)
            se = math.sqrt(sum(d["se"] ** 2 for d in diffs)) / len(diffs)
            out[key][m] = {"mean": mean, "se": se,
                           "verdict": verdict({"value": mean, "se": se}, m),
                           "within_one_se": abs(mean) <= se}
    out["chosen_minus_best_baseline"] = {}
    for mode in MODES:
        out["chosen_minus_best_baseline"][mode] = {}
        for m in ("rank_ic", "sharpe_net"):
            diffs = [r["studies"][mode]["versus_baseline"].get(m) for r in results]
            diffs = [d for d in diffs if d]
            if diffs:
                mean = sum(d["value"] for d in diffs) / len(diffs)
                se = math.sqrt(sum(d["se"] ** 2 for d in diffs)) / len(diffs)
                out["chosen_minus_best_baseline"][mode][m] = {
                    "mean": mean, "se": se, "verdict": verdict({"value": mean, "se": se}, m)}
    saved = [r["pruning_saved"] for r in results if r["pruning_saved"] is not None]
    out["median_pruning_saved"] = statistics.median(saved) if saved else None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=DEFAULT_TRIALS)
    parser.add_argument("--n-stocks", type=int, default=150)
    parser.add_argument("--n-dates", type=int, default=1000)
    parser.add_argument("--market-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--folds", type=int, default=4, help="walk-forward folds")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30, help="max steps per epoch")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument("--workdir", type=Path, default=Path("output/bench/cv_studies"))
    parser.add_argument("--out", type=Path, default=Path("output/bench"))
    parser.add_argument("--keep", action="store_true", help="keep the studies' directories")
    args = parser.parse_args(argv)
    if args.n_trials < 3:
        parser.error("--n-trials must be >= 3 (a correlation across trials)")
    settings = {k: v for k, v in vars(args).items() if k not in ("workdir", "out", "keep")}
    settings.update(market_difficulty="realistic", sampler="random", selection="rank_ic")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "cv.json"
    results: list[dict[str, Any]] = []
    for market_seed in args.market_seeds:
        results.append(run_market(args, market_seed))
        print_market(results[-1])
        # Written after every market: a long run keeps what it measured.
        path.write_text(json.dumps({"settings": settings, "markets": results,
                                    "pooled": pooled(results)}, indent=1) + "\n")
    summary = pooled(results)
    print("\npooled over markets:")
    for mode, rho in summary["median_selection_test_spearman"].items():
        print(f"  {mode}: median selection~test Spearman {_f(rho)}")
    for key in ("walk_forward_minus_holdout", "pruned_minus_unpruned"):
        for m, v in summary[key].items():
            print(f"  {key} {m}: {v['mean']:+.4f} ± {v['se']:.4f} ({v['verdict']})")
    for mode, by_metric in summary["chosen_minus_best_baseline"].items():
        for m, v in by_metric.items():
            print(f"  {mode} chosen minus best baseline, test {m}: {v['mean']:+.4f} ± "
                  f"{v['se']:.4f} ({v['verdict']})")
    if summary["median_pruning_saved"] is not None:
        print(f"  fold pruning saved (median) {summary['median_pruning_saved']:.0%} of the "
              "model-epochs")
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
