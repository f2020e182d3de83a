"""Does the search beat random? TPE and NSGA-II against random search, paired over seeds.

Run from the repository root:

    python -m scripts.bench_search                          # 3 seeds x 8 trials per sampler
    python -m scripts.bench_search --samplers tpe random --seeds 0 1 2 3 --trials 16

Every sampler runs the same study, a single objective (validation RankIC, maximised) of the
ATFT-GAT-FAN workload on the demo's search space without the graph block, on one CPU-sized
synthetic market (shrunk from the demo's so a trial takes seconds: 60 stocks, 260 dates, two
short epochs). For one
seed, every sampler gets the same trial budget, the same market and the same per-trial training
seeds (the trial number), so the runs are paired: TPE's first ``--n-startup`` trials are even
the same random draws as the random sampler's (both draw them with ``RandomSampler(seed)``;
the report checks it), so they are trained once and shared, and the samplers part only where
TPE starts to model.

Reported per sampler and seed: the best validation RankIC reached after each trial, and the
test RankIC of that best trial when a trial's outputs carry one (a ``test_rank_ic`` user attr,
or ``<output>/<study>/test_report.json`` mapping trial numbers to ``{"rank_ic": ...}``). The
held-out test period (``hpo.evaluate``) has not landed yet, so today every test figure is
``null`` and the output says so: no test number is ever made up.

Writes ``output/bench/search.json`` and prints a table. The studies live in
``output/bench/search/hpo.db``; a rerun with the same arguments resumes them.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
import tomllib
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "studies" / "demo.toml"
# Shrunk from the demo so one trial takes ~20 s on a busy 2-core machine: the graph block is
# off (it tripled the epoch time here), so its parameters leave the space with it.
DATA = {"source": "synthetic", "n_stocks": 60, "n_dates": 260, "market_seed": 0,
        "nan_policy": "mask", "val_fraction": 0.25, "purge": 20}
TRAINER = {"epochs": 2, "use_graph": False, "max_steps_per_epoch": 15, "lookback": 10,
           "warmup_steps": 3, "hidden_size": 16}
# Left out of the demo's space: the graph's parameters (no graph here), hidden_size (fixed
# small, for time) and batch_size (a 60-stock cross-section makes 200 and 400 the same step).
DROPPED = ("hidden_size", "batch_size", "gat_layers", "gat_heads", "gat_dropout",
           "edge_dropout", "graph_k")
TEST_REPORT = "test_report.json"
NSGA2_POPULATION = 50  # Optuna's default population_size, what hpo.study builds
TEST_PENDING = ("test RankIC pending: the held-out test period (hpo.evaluate) is not on main "
                "yet; no trial carried a test_rank_ic")


def study_raw(sampler: str, seed: int, n_trials: int, n_startup: int) -> dict[str, Any]:
    demo = tomllib.loads(DEMO.read_text())
    space = {k: v for k, v in demo["search_space"].items() if k not in DROPPED}
    return {
        "name": f"search_{sampler}_s{seed}", "workload": "atft_gat", "n_trials": n_trials,
        "description": "bench_search: validation RankIC, paired sampler comparison",
        "objectives": [{"metric": "rank_ic", "direction": "maximize"}],
        "sampler": {"name": sampler, "seed": seed, "n_startup_trials": n_startup},
        "data": DATA, "trainer": TRAINER, "search_space": space,
    }


def test_rank_ics(trials: list[Any], study_dir: Path) -> dict[int, float]:
    """Trial number -> test RankIC, from the trials' attrs or the study's test report."""
    out = {t.number: float(t.user_attrs["test_rank_ic"]) for t in trials
           if isinstance(t.user_attrs.get("test_rank_ic"), int | float)}
    path = study_dir / TEST_REPORT
    if path.is_file():
        report = json.loads(path.read_text())
        for number, row in (report.get("trials") or report).items():
            value = row.get("rank_ic") if isinstance(row, dict) else None
            if isinstance(value, int | float) and str(number).isdigit():
                out.setdefault(int(number), float(value))
    return out


def best_curve(trials: list[Any], tests: dict[int, float]) -> tuple[list[float | None],
                                                                     list[float | None]]:
    """Best validation RankIC after each trial (in trial order), and its test RankIC."""
    best, best_n = None, None
    curve: list[float | None] = []
    test_curve: list[float | None] = []
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == TrialState.COMPLETE and (best is None or t.value > best):
            best, best_n = t.value, t.number
        curve.append(best)
        test_curve.append(tests.get(best_n) if best_n is not None else None)
    return curve, test_curve


def share_startup(source: Any, study: Any, n_startup: int) -> None:
    """Copy ``source``'s first ``n_startup`` complete trials into the empty ``study``.

    Both samplers draw their startup trials with ``RandomSampler(seed)`` (checked in
    ``startup_draws_equal``), and a trial's training seed is its number, so these trials would
    be trained again to the same values: they are trained once and shared.
    """
    import optuna

    if study.get_trials(deepcopy=False):
        return
    done = sorted((t for t in source.get_trials(deepcopy=False)
                   if t.state == TrialState.COMPLETE), key=lambda t: t.number)[:n_startup]
    for t in done:
        study.add_trial(optuna.trial.create_trial(
            params=t.params, distributions=t.distributions, values=t.values,
            user_attrs={**t.user_attrs, "shared_from": f"{source.study_name}#{t.number}"}))


def run_one(sampler: str, seed: int, *, n_trials: int, n_startup: int, out_dir: Path,
            share_from: str | None = None) -> dict[str, Any]:
    import optuna

    from hpo.config import parse_study
    from hpo.study import open_study
    from hpo.worker import run_worker

    raw = study_raw(sampler, seed, n_trials, n_startup)
    spec = parse_study(raw, path=Path(f"{raw['name']}.toml"))
    url = f"sqlite:///{(out_dir / 'hpo.db').resolve()}"
    study = open_study(spec, url, force=False, target=n_trials, quiet=True)
    if share_from is not None and not study.get_trials(deepcopy=False):
        share_startup(optuna.load_study(study_name=share_from, storage=url), study, n_startup)
        # opened again, so the sampler's seed moves past the shared trials (no re-draws)
        study = open_study(spec, url, force=False, target=n_trials, quiet=True)
    started = time.perf_counter()
    code = run_worker(study, spec, output=out_dir, target=n_trials, timeout=None,
                      announce=False)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL]
    curve, test_curve = best_curve(trials, test_rank_ics(trials, out_dir / spec.name))
    return {"exit_code": code, "seconds": round(time.perf_counter() - started, 1),
            "rank_ic": [t.value if t.state == TrialState.COMPLETE else None
                        for t in sorted(trials, key=lambda t: t.number)],
            "best_val_rank_ic": curve, "best_test_rank_ic": test_curve}


def summarise(runs: dict[str, dict[int, dict[str, Any]]], seeds: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sampler, by_seed in runs.items():
        finals = [by_seed[s]["best_val_rank_ic"][-1] for s in seeds]
        tests = [by_seed[s]["best_test_rank_ic"][-1] for s in seeds]
        out[sampler] = {
            "final_best_val_rank_ic": finals,
            "median_final_best_val_rank_ic": statistics.median(finals),
            "final_best_test_rank_ic": tests,
            "best_val_rank_ic_per_trial": {str(s): by_seed[s]["best_val_rank_ic"]
                                           for s in seeds},
            "best_test_rank_ic_per_trial": {str(s): by_seed[s]["best_test_rank_ic"]
                                            for s in seeds},
        }
    if "random" in out:
        base = out["random"]["final_best_val_rank_ic"]
        for sampler, row in out.items():
            if sampler != "random":
                gaps = [a - b for a, b in zip(row["final_best_val_rank_ic"], base, strict=True)]
                row["gap_vs_random_per_seed"] = gaps
                row["gap_vs_random_median"] = statistics.median(gaps)
                row["wins_vs_random"] = sum(g > 0 for g in gaps)
    return out


def draws_equal_random(name: str, seeds: list[int], n_trials: int) -> bool:
    """Whether sampler ``name`` proposes exactly the random sampler's points over its first
    ``n_trials`` (TPE's startup trials and NSGA-II's first generation are drawn by
    ``RandomSampler(seed)``). Checked by drawing, without training, on the bench's space."""
    import optuna

    from hpo.config import parse_study
    from hpo.objective import suggest

    spec = parse_study(study_raw("random", 0, n_trials, 1), path=Path("draws.toml"),
                       check_workload=False)
    for seed in seeds:
        draws = []
        first = (optuna.samplers.NSGAIISampler(seed=seed) if name == "nsga2" else
                 optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_trials,
                                            multivariate=True, constant_liar=True))
        for sampler in (first, optuna.samplers.RandomSampler(seed=seed)):
            study = optuna.create_study(directions=["maximize"], sampler=sampler)
            params = []
            for _ in range(n_trials):
                trial = study.ask()
                params.append({p.name: suggest(trial, p) for p in spec.search_space})
                study.tell(trial, 0.0)
            draws.append(params)
        if draws[0] != draws[1]:
            return False
    return True


def write_report(args: argparse.Namespace, runs: dict[str, dict[int, dict[str, Any]]],
                 seeds: list[int]) -> dict[str, Any]:
    summary = summarise(runs, seeds)
    any_test = any(v is not None for row in summary.values()
                   for v in row["final_best_test_rank_ic"])
    report: dict[str, Any] = {
        "n_trials": args.trials, "seeds": seeds, "n_startup_trials": args.n_startup,
        "objective": "validation rank_ic (maximize), single objective",
        "market": DATA, "trainer": TRAINER,
        "test_rank_ic": "reported per trial" if any_test else TEST_PENDING,
        "samplers": summary,
        "shared_startup_trials": args.n_startup,
        "startup_draws_equal": draws_equal_random("tpe", seeds, args.n_startup),
    }
    if "nsga2" in args.samplers and args.trials <= NSGA2_POPULATION:
        same = draws_equal_random("nsga2", seeds, args.trials)
        report["nsga2"] = (
            f"not trained: with a budget of {args.trials} <= its population_size "
            f"({NSGA2_POPULATION}), NSGA-II draws "
            + ("exactly the random sampler's points (checked by drawing), so its results "
               "are random's" if same else "other points than random (checked); rerun with "
               "more trials"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samplers", nargs="+", default=["tpe", "nsga2", "random"],
                   choices=["tpe", "nsga2", "gp", "random"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=8, help="trial budget per sampler and seed")
    p.add_argument("--n-startup", type=int, default=4, help="TPE/GP random startup trials")
    p.add_argument("--dir", type=Path, default=Path("output/bench/search"))
    p.add_argument("--out", type=Path, default=Path("output/bench/search.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    args.dir.mkdir(parents=True, exist_ok=True)
    trained = [s for s in args.samplers if s != "nsga2" or args.trials > NSGA2_POPULATION]
    runs: dict[str, dict[int, dict[str, Any]]] = {s: {} for s in trained}
    done: list[int] = []
    for seed in args.seeds:  # seed-major: a cut-short run still holds whole, paired seeds
        for i, sampler in enumerate(trained):
            first = study_raw(trained[0], seed, args.trials, args.n_startup)["name"]
            run = run_one(sampler, seed, n_trials=args.trials, n_startup=args.n_startup,
                          out_dir=args.dir, share_from=first if i else None)
            runs[sampler][seed] = run
            print(f"{sampler:7s} seed {seed}: best val RankIC {run['best_val_rank_ic'][-1]:.4f}"
                  f" after {args.trials} trials ({run['seconds']:.0f} s)", flush=True)
        done.append(seed)
        report = write_report(args, runs, done)
    summary = report["samplers"]
    any_test = report["test_rank_ic"] != TEST_PENDING
    print(f"\n{'sampler':8s} {'median best val RankIC':>23s} {'per seed':>30s} "
          f"{'gap vs random (median)':>23s}")
    for sampler, row in summary.items():
        per_seed = " ".join(f"{v:.4f}" for v in row["final_best_val_rank_ic"])
        gap = row.get("gap_vs_random_median")
        print(f"{sampler:8s} {row['median_final_best_val_rank_ic']:23.4f} {per_seed:>30s} "
              f"{'' if gap is None else f'{gap:+.4f}':>23s}")
    if not any_test:
        print(f"note: {TEST_PENDING}")
    if "nsga2" in report:
        print(f"nsga2: {report['nsga2']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
