"""``python -m hpo.evaluate --study NAME``: open the held-out test period, once, after selection.

Example:
    python -m hpo.evaluate --study production
    python -m hpo.evaluate --study demo --output output --storage sqlite:///output/hpo.db

For the best trial (one objective) or every Pareto-front trial (several), the saved model is
loaded and the study's test dates are predicted (``trainers.atft_gat.predict``). Written to
``<output>/<study>/``:

* ``test_predictions.parquet``: ``trial, date, code, pred, target`` for every evaluated trial;
* ``test_report.json``: per trial the validation and the test Sharpe, RankIC, IC, ICIR, rank
  ICIR and hit rate, each with a standard error (moving-block bootstrap over dates,
  ``trainers.metrics.predictions_metrics_with_se``), the chosen trial and the rule that chose
  it, the deflated Sharpe ratio of the chosen trial's **validation** Sharpe given every trial
  the study ran, the probabilistic Sharpe ratio of its **test** Sharpe, and on a synthetic
  market the oracle's and the best single raw feature's figures on the same dates.

The chosen trial: the best trial of a single-objective study; in a multi-objective study the
Pareto-front trial with the highest validation Sharpe (the lowest number on a tie). Nothing
here uses test figures to choose anything.

The report's identity (study, front, chosen trial, SHA-256 of each model file, the date split,
the trials counted for deflation and ``METRICS_VERSION``) is hashed into ``report_id``. When
the existing report has the same id, nothing is recomputed or rewritten; otherwise a fresh
report replaces it. The file holds no timestamp, so recomputing an unchanged study gives the
same bytes. Test figures go to these files, to the study user attr ``test_report`` and to the
study's dashboard note: never into a trial's values or user attrs.
Exit codes: 0 ok, 2 a user error (one line ``error: ...``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import polars as pl
from optuna.trial import FrozenTrial, TrialState

from hpo.heldout import (
    METRICS_VERSION,
    PREDICTIONS_FILE,
    REPORT_FILE,
    SUMMARY_ATTR,
    TABLE_METRICS,
    render_lines,
)
from hpo.objective import SPLIT_ATTR, trial_dir
from hpo.results import best_trials, metric_names
from trainers.cli import OneLineParser
from trainers.context import atomic_write_bytes, atomic_write_json
from trainers.errors import UserError

EXIT_OK, EXIT_USER = 0, 2
# Workloads whose trainer holds out a test period and can predict it from a saved model.
TEST_WORKLOADS = ("atft_gat",)
SELECTION_METRIC = "sharpe"  # the validation figure that picks the chosen Pareto-front trial
CHOICE_RULE_SINGLE = "the best trial of the study's objective"
CHOICE_RULE_FRONT = ("the Pareto-front trial with the highest validation Sharpe "
                     "(lowest trial number on a tie)")
REPORTED = ("sharpe", "rank_ic", "ic", "icir", "rank_icir", "hit_rate", "long_short_mean",
            "n_dates")


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate_study` did: the report, where it is, and whether it was rewritten."""

    report: dict[str, Any]
    path: Path
    changed: bool


def has_test_period(workload: str | None) -> bool:
    return workload in TEST_WORKLOADS


def choose(study: optuna.Study, front: list[FrozenTrial]) -> tuple[FrozenTrial, str]:
    """The chosen trial of the front and the rule that chose it (see the module docstring)."""
    if len(study.directions) == 1:
        return front[0], CHOICE_RULE_SINGLE

    def key(t: FrozenTrial) -> tuple[float, int]:
        value = t.user_attrs.get(SELECTION_METRIC)
        ok = isinstance(value, int | float) and math.isfinite(value)
        return (-float(value) if ok else math.inf, t.number)

    return min(front, key=key), CHOICE_RULE_FRONT


def searched_sharpes(study: optuna.Study) -> dict[int, float]:
    """Validation Sharpe of every COMPLETE trial that has one: the trials the choice was
    made among, which the deflated Sharpe ratio accounts for."""
    out = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        value = t.user_attrs.get(SELECTION_METRIC)
        if isinstance(value, int | float) and math.isfinite(value):
            out[t.number] = float(value)
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _metrics_with_se(frame: pl.DataFrame, horizon: int) -> tuple[dict[str, Any], dict]:
    from trainers.metrics import predictions_metrics_with_se

    raw = predictions_metrics_with_se(frame, horizon=horizon)
    boot = {k: int(v) for k, v in raw.pop("bootstrap").items()}
    return {name: raw[name] for name in REPORTED}, boot


def _moments(frame: pl.DataFrame, horizon: int) -> dict[str, float]:
    from trainers.metrics import sharpe_moments

    return sharpe_moments(frame["date"].to_numpy(), frame["pred"].to_numpy(),
                          frame["target"].to_numpy(), horizon=horizon)


def deflation(chosen_sharpe: float, frame: pl.DataFrame, *, sharpes: dict[int, float],
              horizon: int) -> dict[str, Any]:
    """The deflated Sharpe ratio of the chosen trial's validation Sharpe (Bailey and Lopez de
    Prado 2014), with every input it used. ``frame``: the chosen trial's validation rows;
    ``sharpes``: the annualised validation Sharpe of every trial searched. The moments (per
    period skewness, non-excess kurtosis, non-overlapping periods) are
    ``trainers.metrics.sharpe_moments`` of the chosen trial's long-short."""
    from trainers.metrics import deflated_sharpe_ratio, expected_max_sharpe

    values = np.array(list(sharpes.values()), dtype=np.float64)
    variance = float(values.var(ddof=1)) if len(values) >= 2 else 0.0
    m = _moments(frame, horizon)
    ppy = m["periods_per_year"]
    n_trials = max(1, len(values))
    value = deflated_sharpe_ratio(chosen_sharpe, n_trials=n_trials, sharpe_variance=variance,
                                  n_obs=int(m["n_obs"]), skew=m["skew"],
                                  kurtosis=m["kurtosis"], periods_per_year=ppy)
    benchmark = expected_max_sharpe(n_trials=n_trials, sharpe_variance=variance / ppy)
    return {"value": value, "of": "the chosen trial's validation Sharpe",
            "sharpe": chosen_sharpe, "n_trials": n_trials, "sharpe_variance": variance,
            "expected_max_sharpe": benchmark * math.sqrt(ppy), "n_obs": int(m["n_obs"]),
            "skew": m["skew"], "kurtosis": m["kurtosis"], "periods_per_year": ppy}


def psr_of_test(test_sharpe: float, frame: pl.DataFrame, *, horizon: int) -> dict[str, Any]:
    """Probabilistic Sharpe ratio of a test Sharpe against 0: not deflated, since nothing was
    chosen on the test period."""
    from trainers.metrics import probabilistic_sharpe_ratio

    m = _moments(frame, horizon)
    ok = math.isfinite(test_sharpe) and m["n_obs"] >= 2
    value = (probabilistic_sharpe_ratio(test_sharpe / math.sqrt(m["periods_per_year"]),
                                        benchmark=0.0, n_obs=int(m["n_obs"]), skew=m["skew"],
                                        kurtosis=m["kurtosis"]) if ok else math.nan)
    return {"value": value, "of": "the chosen trial's test Sharpe, against 0",
            "n_obs": int(m["n_obs"]), "skew": m["skew"], "kurtosis": m["kurtosis"]}


def synthetic_baselines(config: Any, dates: np.ndarray, split: Any) -> dict[str, Any] | None:
    """The oracle and the best raw feature (``market_baselines``) on the validation and the
    test dates of a synthetic market; None for a user panel. With an execution lag the
    baselines are scored on the same lagged target as the trials."""
    if config.source != "synthetic":
        return None
    from trainers.atft_gat.synthetic import generate_market, market_baselines

    frame, oracle = generate_market(n_stocks=config.n_stocks, n_dates=config.n_dates,
                                    seed=config.market_seed,
                                    difficulty=config.market_difficulty, return_oracle=True)
    market = frame.with_columns(oracle_own=oracle["oracle_own"],
                                oracle_peer=oracle["oracle_peer"])
    target = f"ret_{config.metric_horizon}d"
    if config.execution_lag:
        market = market.with_columns(
            pl.col(target).shift(-config.execution_lag).over("code"))
    out = {}
    for period, idx in (("validation", split.val), ("test", split.test)):
        out[period] = market_baselines(market, dates[idx], horizon=config.metric_horizon)
    return out


def _period_figures(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: {"value": v, "se": None} for k, v in metrics.items()
            if k in REPORTED and isinstance(v, int | float)}


def _baseline_rows(baselines: dict[str, Any] | None) -> dict[str, Any]:
    if not baselines:
        return {}
    rows: dict[str, Any] = {}
    oracle_v, oracle_t = baselines["validation"]["oracle"], baselines["test"]["oracle"]
    if oracle_v is not None and oracle_t is not None:
        rows["oracle"] = {"validation": _period_figures(oracle_v),
                          "test": _period_figures(oracle_t)}
    best_v, best_t = baselines["validation"]["best_feature"], baselines["test"]["best_feature"]
    rows[f"best feature ({best_t['sign']:+.0f} {best_t['name']})"] = {
        "validation": _period_figures(best_v), "test": _period_figures(best_t)}
    return rows


def _identity(study: optuna.Study, front: list[FrozenTrial], chosen: FrozenTrial,
              digests: dict[int, str], sharpes: dict[int, float]) -> dict[str, Any]:
    return {"study": study.study_name, "workload": study.user_attrs.get("workload"),
            "metrics_version": METRICS_VERSION, "front": [t.number for t in front],
            "chosen": chosen.number, "model_sha256": {str(n): d for n, d in digests.items()},
            "split": study.user_attrs.get(SPLIT_ATTR),
            "searched_sharpes": {str(n): v for n, v in sorted(sharpes.items())}}


def report_id(identity: dict[str, Any]) -> str:
    return _sha256(json.dumps(identity, sort_keys=True).encode())


def _existing_id(out_dir: Path) -> str | None:
    path = out_dir / REPORT_FILE
    if not path.is_file() or not (out_dir / PREDICTIONS_FILE).is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    preds_sha = report.get("files", {}).get("test_predictions_sha256")
    if preds_sha != _sha256((out_dir / PREDICTIONS_FILE).read_bytes()):
        return None  # the predictions file was changed or replaced: rebuild both
    return report.get("report_id")


def evaluate_study(study: optuna.Study, *, output: Path, force: bool = False) -> Evaluation:
    """Predict the test period for the chosen trials and write the report (module docstring).

    ``output`` is the study's ``--output`` directory: trial directories, the feature cache and
    the report all live under it. ``force`` recomputes even when the report is up to date.
    """
    from trainers.atft_gat.predict import load_trained, model_digest

    workload = study.user_attrs.get("workload")
    if not has_test_period(workload):
        raise UserError(f"workload {workload!r} of study {study.study_name!r} has no held-out "
                        f"test period yet; only {', '.join(TEST_WORKLOADS)} studies can be "
                        "evaluated")
    front = best_trials(study)
    if not front:
        raise UserError(f"study {study.study_name!r} has no complete trial yet; nothing to "
                        "evaluate")
    chosen, rule = choose(study, front)
    out_dir = Path(output) / study.study_name
    dirs = {t.number: trial_dir(output, study.study_name, t.number) for t in front}
    trained = {n: load_trained(d) for n, d in dirs.items()}
    if trained[chosen.number].config.test_fraction <= 0:
        raise UserError(f"study {study.study_name!r} holds out no test period (test_fraction "
                        "= 0); set test_fraction in the study file's [data] for a new study")
    digests = {n: model_digest(d) for n, d in dirs.items()}
    sharpes = searched_sharpes(study)
    identity = _identity(study, front, chosen, digests, sharpes)
    rid = report_id(identity)
    report_path = out_dir / REPORT_FILE
    if not force and _existing_id(out_dir) == rid:
        return Evaluation(json.loads(report_path.read_text()), report_path, changed=False)

    report = _build_report(study, front, chosen, rule, dirs=dirs, trained=trained,
                           output=Path(output), identity=identity, rid=rid, sharpes=sharpes)
    preds = report.pop("_predictions")
    buf = io.BytesIO()
    preds.write_parquet(buf)
    data = buf.getvalue()
    report["files"] = {"test_predictions": PREDICTIONS_FILE,
                       "test_predictions_sha256": _sha256(data)}
    # Predictions first: a report never points at predictions that are not on disk.
    atomic_write_bytes(out_dir / PREDICTIONS_FILE, data)
    atomic_write_json(report_path, report)
    report = json.loads(report_path.read_text())  # as readers see it: NaN stored as null
    publish_summary(study, report)
    return Evaluation(report, report_path, changed=True)


def _build_report(study: optuna.Study, front: list[FrozenTrial], chosen: FrozenTrial,
                  rule: str, *, dirs: dict[int, Path], trained: dict[int, Any], output: Path,
                  identity: dict[str, Any], rid: str,
                  sharpes: dict[int, float]) -> dict[str, Any]:
    from trainers.atft_gat.predict import predict_period

    names = metric_names(study)
    trials, frames = [], []
    boot: dict[str, int] = {}
    split = dates = None
    chosen_val = chosen_test = None
    for t in front:
        model = trained[t.number]
        horizon = model.config.metric_horizon
        test_frame, split, dates = predict_period(dirs[t.number], cache_dir=output / "cache",
                                                  trained=model)
        recorded = study.user_attrs.get(SPLIT_ATTR)
        if recorded is not None and recorded != split.ranges(dates):
            raise UserError(f"trial {t.number}'s data now splits into {split.ranges(dates)}, the "
                            f"study was run on {recorded}: the data changed since; evaluate "
                            "with the data the study was run on")
        val_frame = pl.read_parquet(dirs[t.number] / "predictions.parquet")
        validation, boot = _metrics_with_se(val_frame, horizon)
        test, _ = _metrics_with_se(test_frame, horizon)
        trials.append({"number": t.number, "chosen": t.number == chosen.number,
                       "values": dict(zip(names, t.values, strict=False)),
                       "params": t.params, "validation": validation, "test": test})
        frames.append(test_frame.with_columns(pl.lit(t.number, pl.Int64).alias("trial"))
                      .select("trial", "date", "code", "pred", "target"))
        if t.number == chosen.number:
            chosen_val, chosen_test = val_frame, test_frame
    assert split is not None and dates is not None and chosen_val is not None
    config = trained[chosen.number].config
    horizon = config.metric_horizon
    chosen_row = next(r for r in trials if r["chosen"])
    ranges = split.ranges(dates)
    baselines = synthetic_baselines(config, dates, split)
    return {
        "study": study.study_name,
        "report_id": rid,
        "identity": identity,
        "split": ranges,
        "validation_dates": ranges.get("val"),
        "test_dates": ranges.get("test"),
        "metric_horizon": horizon,
        "objectives": names,
        "kind": "best_trial" if len(names) == 1 else "pareto_front",
        "chosen": chosen.number,
        "rule": rule,
        "standard_errors": (f"moving-block bootstrap over dates ({boot.get('n_boot')} "
                            f"replicates, blocks of {boot.get('block_length')} dates, seed "
                            f"{boot.get('seed')})"),
        "bootstrap": boot,
        "trials": trials,
        "deflated_sharpe": deflation(chosen_row["validation"]["sharpe"]["value"], chosen_val,
                                     sharpes=sharpes, horizon=horizon),
        "test_psr": psr_of_test(chosen_row["test"]["sharpe"]["value"], chosen_test,
                             horizon=horizon),
        "baselines": baselines,
        "_predictions": pl.concat(frames),
    }


def summary_of(report: dict[str, Any]) -> dict[str, Any]:
    """The short form stored as the study user attr ``test_report`` (what the tables show)."""
    def figures(period: dict[str, Any]) -> dict[str, Any]:
        return {k: {"value": period[k]["value"], "se": period[k]["se"]}
                for k in TABLE_METRICS if k in period}

    return {
        "report_id": report["report_id"], "file": REPORT_FILE,
        "validation_dates": report["validation_dates"], "test_dates": report["test_dates"],
        "chosen": report["chosen"], "rule": report["rule"],
        "standard_errors": report["standard_errors"],
        "trials": [{"number": t["number"], "chosen": t["chosen"],
                    "validation": figures(t["validation"]), "test": figures(t["test"])}
                   for t in report["trials"]],
        "baselines": _baseline_rows(report.get("baselines")),
        "deflated_sharpe": {k: report["deflated_sharpe"][k] for k in ("value", "n_trials")},
        "test_psr": report["test_psr"]["value"],
    }


def publish_summary(study: optuna.Study, report: dict[str, Any]) -> None:
    """The summary as the study user attr and in the study's dashboard note."""
    from hpo.artifacts import save_study_note

    study.set_user_attr(SUMMARY_ATTR, summary_of(report))
    save_study_note(study)


# -- CLI --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m hpo.evaluate",
        description="Predict the held-out test period with the chosen trials' saved models "
        "and write <output>/<study>/test_report.json and test_predictions.parquet. "
        "Example: python -m hpo.evaluate --study demo")
    p.add_argument("--study", required=True, help="the study name in storage (e.g. demo)")
    p.add_argument("--storage", default=None,
                   help="storage URL (default: $HPO_STORAGE, else sqlite:///<output>/hpo.db)")
    p.add_argument("--output", type=Path, default=Path("output"),
                   help="the study's output directory: trial models, feature cache, embedded "
                   "database; the report goes to <output>/<study>/ (default: output)")
    p.add_argument("--force", action="store_true",
                   help="recompute the report even when the existing one is up to date")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hpo.status import load_existing_study, open_existing_storage
    from hpo.storage import resolve_url

    try:
        url = resolve_url(args.storage, args.output)
        study = load_existing_study(open_existing_storage(url), args.study, url)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        result = evaluate_study(study, output=args.output, force=args.force)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER
    state = "written" if result.changed else "unchanged (same front, models and split)"
    print(f"test report {result.path}: {state}")
    print("\n".join(render_lines(summary_of(result.report))))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
