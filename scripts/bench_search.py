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

Reported per sampler and seed, after each trial: the best **validation** RankIC so far and the
**test** RankIC of the trial that holds it. Validation RankIC is what the search maximised and
chose on, so its best is in-sample for the search (a selection figure). Test RankIC is the mean
per-date rank IC of that trial's saved model on the study's held-out test dates, with a
moving-block bootstrap standard error (``trainers.atft_gat.predict.predict_period`` and
``trainers.metrics.predictions_metrics_with_se``, as ``hpo.evaluate`` computes them). It is
computed only after the study has ended, for the trials that were ever best on validation, so
no trial, pruner or sampler saw the test period. A trial shared from another study is
predicted from that study's trial directory, where it was trained.

Writes ``output/bench/search.json`` and prints a table. The studies live in
``output/bench/search/hpo.db``; a rerun with the same arguments resumes them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
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
NSGA2_POPULATION = 50  # Optuna's default population_size, what hpo.study builds
SHARED_ATTR = "shared_from"  # "<study>#<number>" on a trial copied by share_startup
FIGURES = {
    "val_rank_ic": "validation RankIC, the objective the search maximised and chose on: the "
                   "best of it is in-sample for the search (selection)",
    "test_rank_ic": "held-out test RankIC (mean per-date rank IC on the study's test dates, "
                    "moving-block bootstrap SE) of the trial best on validation, predicted "
                    "from its saved model after the study ended",
}
# (study, trial number) of a trained trial -> its held-out RankIC; shared between the studies
# of one run, so a trial shared by share_startup is predicted once.
HeldOut = dict[tuple[str, int], dict[str, Any]]


def study_raw(sampler: str, seed: int, n_trials: int, n_startup: int,
              market: str = "realistic") -> dict[str, Any]:
    demo = tomllib.loads(DEMO.read_text())
    space = {k: v for k, v in demo["search_space"].items() if k not in DROPPED}
    return {
        "name": f"search_{sampler}_s{seed}", "workload": "atft_gat", "n_trials": n_trials,
        "description": "bench_search: validation RankIC, paired sampler comparison",
        "objectives": [{"metric": "rank_ic", "direction": "maximize"}],
        "sampler": {"name": sampler, "seed": seed, "n_startup_trials": n_startup},
        "data": {**DATA, "market_difficulty": market}, "trainer": TRAINER,
        "search_space": space,
    }


def best_curve(trials: list[Any]) -> tuple[list[float | None], list[int | None]]:
    """Best validation RankIC after each trial (in trial order), and the number of the trial
    that holds it (the first to reach it)."""
    best, best_n = None, None
    curve: list[float | None] = []
    numbers: list[int | None] = []
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == TrialState.COMPLETE and (best is None or t.value > best):
            best, best_n = t.value, t.number
        curve.append(best)
        numbers.append(best_n)
    return curve, numbers


def trained_in(trial: Any, study_name: str) -> tuple[str, int]:
    """The study and trial number whose trial directory holds ``trial``'s model: a trial
    copied by ``share_startup`` was trained in its source study, not in ``study_name``."""
    shared = trial.user_attrs.get(SHARED_ATTR)
    if shared is None:
        return study_name, trial.number
    name, _, number = str(shared).rpartition("#")
    return name, int(number)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def heldout_rank_ic(out_dir: Path, study_name: str, number: int, *,
                    recorded_split: dict[str, Any] | None = None) -> dict[str, Any]:
    """Test RankIC (``value``, ``se``; None where undefined) of trial ``number`` of
    ``study_name``, from its saved model on the study's held-out test dates.

    ``out_dir`` is the studies' ``--output``: the trial directories and the feature cache the
    trials trained on (``<out_dir>/cache``) are under it. ``recorded_split`` is the study's
    ``date_split`` attr: predicting on data that now splits otherwise is an error.
    """
    from hpo.objective import trial_dir
    from trainers.atft_gat.predict import load_trained, predict_period
    from trainers.errors import UserError
    from trainers.metrics import Scoring, predictions_metrics_with_se

    directory = trial_dir(out_dir, study_name, number)
    trained = load_trained(directory)
    frame, split, dates = predict_period(directory, cache_dir=Path(out_dir) / "cache",
                                         period="test", trained=trained)
    ranges = split.ranges(dates)
    if recorded_split is not None and recorded_split != ranges:
        raise UserError(f"{directory}: the data now splits into {ranges}, the study was run on "
                        f"{recorded_split}; rerun the bench into a fresh --dir")
    metrics = predictions_metrics_with_se(
        frame, scoring=Scoring(horizon=trained.config.metric_horizon))
    return {"value": _finite(metrics["rank_ic"]["value"]),
            "se": _finite(metrics["rank_ic"]["se"]),
            "n_dates": int(metrics["n_dates"]["value"]), "test_dates": ranges.get("test"),
            "trained_in": f"{study_name}#{number}"}


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
            user_attrs={**t.user_attrs, "shared_from": f"{source.study_name}#{t.number}"},
            system_attrs={k: v for k, v in t.system_attrs.items() if k.startswith("hpo:")}))


def run_one(sampler: str, seed: int, *, n_trials: int, n_startup: int, out_dir: Path,
            share_from: str | None = None, heldout: HeldOut | None = None,
            market: str = "realistic") -> dict[str, Any]:
    """Run (or resume) one sampler's study, then, the study over, predict the held-out test
    period for every trial that was ever best on validation. ``heldout`` caches those
    predictions across the run's studies (shared trials are predicted once)."""
    import optuna

    from hpo.config import parse_study
    from hpo.objective import SPLIT_ATTR
    from hpo.study import open_study
    from hpo.worker import run_worker

    raw = study_raw(sampler, seed, n_trials, n_startup, market)
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
    seconds = round(time.perf_counter() - started, 1)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL]
    curve, best_numbers = best_curve(trials)
    # The study has ended: only now is the test period opened, for its val-best trials.
    heldout = {} if heldout is None else heldout
    by_number = {t.number: t for t in trials}
    recorded = study.user_attrs.get(SPLIT_ATTR)
    tests: dict[int, dict[str, Any]] = {}
    for number in sorted({n for n in best_numbers if n is not None}):
        key = trained_in(by_number[number], spec.name)
        if key not in heldout:
            heldout[key] = heldout_rank_ic(out_dir, *key, recorded_split=recorded)
        tests[number] = heldout[key]

    def test_curve(field: str) -> list[float | None]:
        return [None if n is None else tests[n][field] for n in best_numbers]

    return {"exit_code": code, "seconds": seconds,
            "rank_ic": [t.value if t.state == TrialState.COMPLETE else None
                        for t in sorted(trials, key=lambda t: t.number)],
            "best_val_rank_ic": curve, "best_val_trial": best_numbers,
            "best_test_rank_ic": test_curve("value"), "best_test_rank_ic_se": test_curve("se"),
            "test_rank_ic_of_val_best": {str(n): row for n, row in tests.items()},
            "split": recorded}


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _gaps(values: list[float | None], base: list[float | None]) -> list[float | None]:
    return [None if a is None or b is None else a - b for a, b in zip(values, base, strict=True)]


def summarise(runs: dict[str, dict[int, dict[str, Any]]], seeds: list[int]) -> dict[str, Any]:
    """Per sampler: the final best validation RankIC per seed and the held-out test RankIC of
    the trial that holds it, their medians, and (against random) the paired gaps."""
    out: dict[str, Any] = {}
    for sampler, by_seed in runs.items():
        finals = [by_seed[s]["best_val_rank_ic"][-1] for s in seeds]
        tests = [by_seed[s]["best_test_rank_ic"][-1] for s in seeds]
        out[sampler] = {
            "final_best_val_rank_ic": finals,
            "median_final_best_val_rank_ic": _median(finals),
            "final_best_val_trial": [by_seed[s]["best_val_trial"][-1] for s in seeds],
            "final_best_test_rank_ic": tests,
            "final_best_test_rank_ic_se": [by_seed[s]["best_test_rank_ic_se"][-1]
                                           for s in seeds],
            "median_final_best_test_rank_ic": _median(tests),
            "best_val_rank_ic_per_trial": {str(s): by_seed[s]["best_val_rank_ic"]
                                           for s in seeds},
            "best_test_rank_ic_per_trial": {str(s): by_seed[s]["best_test_rank_ic"]
                                            for s in seeds},
            "best_test_rank_ic_se_per_trial": {str(s): by_seed[s]["best_test_rank_ic_se"]
                                               for s in seeds},
            "test_rank_ic_of_val_best_trials": {str(s): by_seed[s]["test_rank_ic_of_val_best"]
                                                for s in seeds},
        }
    if "random" in out:
        base = out["random"]
        for sampler, row in out.items():
            if sampler == "random":
                continue
            for figure in ("val", "test"):
                gaps = _gaps(row[f"final_best_{figure}_rank_ic"],
                             base[f"final_best_{figure}_rank_ic"])
                row[f"{figure}_gap_vs_random_per_seed"] = gaps
                row[f"{figure}_gap_vs_random_median"] = _median(gaps)
                row[f"{figure}_wins_vs_random"] = sum(g is not None and g > 0 for g in gaps)
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
    first = next(iter(runs.values()))[seeds[0]]
    report: dict[str, Any] = {
        "n_trials": args.trials, "seeds": seeds, "n_startup_trials": args.n_startup,
        "objective": "validation rank_ic (maximize), single objective",
        "figures": FIGURES, "split": first["split"],
        "market": {**DATA, "market_difficulty": args.market}, "trainer": TRAINER,
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
    p.add_argument("--market", choices=["realistic", "easy"], default="realistic",
                   help="synthetic market: 'realistic' (calibrated, RankIC near what real "
                        "panels give) or 'easy' (strong planted signal, where settings matter "
                        "more); use another --dir and --out per market")
    p.add_argument("--dir", type=Path, default=Path("output/bench/search"))
    p.add_argument("--out", type=Path, default=Path("output/bench/search.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    args.dir.mkdir(parents=True, exist_ok=True)
    trained = [s for s in args.samplers if s != "nsga2" or args.trials > NSGA2_POPULATION]
    runs: dict[str, dict[int, dict[str, Any]]] = {s: {} for s in trained}
    heldout: HeldOut = {}
    done: list[int] = []
    for seed in args.seeds:  # seed-major: a cut-short run still holds whole, paired seeds
        for i, sampler in enumerate(trained):
            first = study_raw(trained[0], seed, args.trials, args.n_startup)["name"]
            run = run_one(sampler, seed, n_trials=args.trials, n_startup=args.n_startup,
                          market=args.market, out_dir=args.dir,
                          share_from=first if i else None, heldout=heldout)
            runs[sampler][seed] = run
            print(f"{sampler:7s} seed {seed}: best val RankIC {_fmt(run['best_val_rank_ic'][-1])}"
                  f", its test RankIC {_fmt(run['best_test_rank_ic'][-1])} after {args.trials} "
                  f"trials ({run['seconds']:.0f} s)", flush=True)
        done.append(seed)
        report = write_report(args, runs, done)
    print_table(report)
    print(f"wrote {args.out}")
    return 0


def _fmt(value: float | None, se: float | None = None, *, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    out = f"{value:+.4f}" if sign else f"{value:.4f}"
    return out if se is None else f"{out}±{se:.4f}"


def print_table(report: dict[str, Any]) -> None:
    summary = report["samplers"]
    for figure, title, per_seed_width in (
            ("val", "validation RankIC (selection: in-sample for the search)", 30),
            ("test", "held-out test RankIC of the val-best trial (value ± bootstrap SE)", 48)):
        print(f"\n{title}")
        print(f"{'sampler':8s} {'median':>8s} {'per seed':>{per_seed_width}s} "
              f"{'gap vs random (median)':>23s}")
        for sampler, row in summary.items():
            values = row[f"final_best_{figure}_rank_ic"]
            ses = (row["final_best_test_rank_ic_se"] if figure == "test"
                   else [None] * len(values))
            per_seed = " ".join(_fmt(v, e) for v, e in zip(values, ses, strict=True))
            gap = row.get(f"{figure}_gap_vs_random_median")
            print(f"{sampler:8s} {_fmt(row[f'median_final_best_{figure}_rank_ic']):>8s} "
                  f"{per_seed:>{per_seed_width}s} "
                  f"{'' if sampler == 'random' else _fmt(gap, sign=True):>23s}")
    if "nsga2" in report:
        print(f"nsga2: {report['nsga2']}")


if __name__ == "__main__":
    raise SystemExit(main())
