"""``python -m hpo.evaluate --study NAME``: open the held-out test period, once, after selection.

Example:
    python -m hpo.evaluate --study production
    python -m hpo.evaluate --study demo --output output --storage sqlite:///output/hpo.db

It works for any workload that declares a held-out capability (``Workload.heldout``, the
protocol in ``trainers.heldout``); the workload itself is never named here. For the best trial
(one objective) or every Pareto-front trial (several), the saved model is loaded and the
study's test dates are predicted. Written to ``<output>/<study>/``:

* ``test_predictions.parquet``: ``trial, date, code, pred, target`` for every evaluated trial;
* ``test_report.json``: per trial the validation and the test figures the workload reports
  (for the ranking workloads Sharpe, RankIC, IC, ICIR, rank ICIR and hit rate), each with a
  standard error (moving-block bootstrap over dates), the chosen trial and the rule that chose
  it, the deflated Sharpe ratio of the chosen trial's **validation** Sharpe given every trial
  the study ran and the probabilistic Sharpe ratio of its **test** Sharpe (when the workload
  gives the long-short moments), and the workload's baselines on the same dates (on a
  synthetic market: the oracle and the best single raw feature).

The chosen trial: the best trial of a single-objective study; in a multi-objective study the
Pareto-front trial with the best validation figure of the workload's ``selection_metric``
(Sharpe for the ranking workloads; the lowest number on a tie). Nothing here uses test figures
to choose anything.

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
import dataclasses
import hashlib
import io
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import polars as pl
from optuna.trial import FrozenTrial

from hpo import attrs
from hpo.cli import EXIT_OK, add_study_flags, command_parser, one_line_errors
from hpo.config import TEST_MODELS, EvaluateSpec
from hpo.heldout import (
    METRICS_VERSION,
    PREDICTIONS_FILE,
    REPORT_FILE,
    render_lines,
)
from hpo.heldout.blend import blend_with_baseline
from hpo.heldout.comparisons import best_of, versus_baselines
from hpo.heldout.luck import (
    COUNTED_STATES,
    DSR_METRIC,
    deflated_metric,
    deflation,
    finite_number,
    overfitting,
    psr_of_test,
    returns_of,
    scoring_cost,
    searched_sharpes,
    validation_returns,
)
from hpo.heldout.openings import (
    LOOK_KEYS,
    ReopenRequired,
    record_opening,
    reopen_message,
    test_openings,
)
from hpo.heldout.summary import publish_summary, summary_of
from hpo.objective import trial_dir
from hpo.results import best_trials, metric_names
from trainers.attrs import DATE_SPLIT
from trainers.context import atomic_write_bytes, atomic_write_json
from trainers.errors import UserError
from trainers.heldout import HeldOut
from trainers.registry import get_workload, workload_names

TEAR_SHEET = "tear_sheet.html"
log = logging.getLogger("hpo")
CHOICE_RULE_SINGLE = "the best trial of the study's objective"


def choice_rule_front(metric: str, direction: str = "maximize") -> str:
    label = "Sharpe" if metric == "sharpe" else metric
    best = "highest" if direction == "maximize" else "lowest"
    return (f"the Pareto-front trial with the {best} validation {label} "
            "(lowest trial number on a tie)")


CHOICE_RULE_FRONT = choice_rule_front(DSR_METRIC)
DEFAULT_TEST_MODEL = EvaluateSpec.test_model


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate_study` did: the report, where it is, and whether it was rewritten."""

    report: dict[str, Any]
    path: Path
    changed: bool


def heldout_of(workload: Any) -> HeldOut | None:
    """The held-out capability of the workload a study names, or None (unknown or none)."""
    if not isinstance(workload, str):
        return None
    try:
        return get_workload(workload).heldout
    except UserError:
        return None


def has_test_period(workload: Any) -> bool:
    return heldout_of(workload) is not None


def _with_test_period() -> list[str]:
    return [n for n in workload_names() if get_workload(n).heldout is not None]


def choose(study: optuna.Study, front: list[FrozenTrial], *, metric: str = DSR_METRIC,
           direction: str = "maximize") -> tuple[FrozenTrial, str]:
    """The chosen trial of the front and the rule that chose it: the best trial of a
    single-objective study; the front trial with the best validation ``metric`` (a user attr
    of every trial) in ``direction`` otherwise, the lowest number on a tie."""
    if len(study.directions) == 1:
        return front[0], CHOICE_RULE_SINGLE
    sign = -1.0 if direction == "maximize" else 1.0

    def key(t: FrozenTrial) -> tuple[float, int]:
        value = t.user_attrs.get(metric)
        return (sign * float(value) if finite_number(value) else math.inf, t.number)

    return min(front, key=key), choice_rule_front(metric, direction)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _identity(study: optuna.Study, front: list[FrozenTrial], chosen: FrozenTrial,
              digests: dict[int, str], sharpes: dict[int, float]) -> dict[str, Any]:
    return {"study": study.study_name, "workload": study.user_attrs.get(attrs.WORKLOAD),
            "metrics_version": METRICS_VERSION, "front": [t.number for t in front],
            "chosen": chosen.number, "model_sha256": {str(n): d for n, d in digests.items()},
            "split": study.user_attrs.get(DATE_SPLIT),
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


def selection_metric(study: optuna.Study, heldout: HeldOut) -> str:
    """The figure the chosen trial is picked by and whose validation value the deflated Sharpe
    ratio deflates: the workload's ``selection_metric``, or ``sharpe_net`` for a study that
    optimises the net Sharpe ratio and not the gross one (it selected on costs)."""
    names = metric_names(study)
    if (heldout.selection_metric == DSR_METRIC and "sharpe_net" in names
            and DSR_METRIC not in names):
        return "sharpe_net"
    return heldout.selection_metric


def chosen_trial(study: optuna.Study, heldout: HeldOut) -> optuna.trial.FrozenTrial:
    """The trial the held-out report chooses (its rule, on validation figures only)."""
    front = best_trials(study)
    if not front:
        raise UserError(f"study {study.study_name!r} has no complete trial yet")
    from trainers.registry import get_workload

    directions = get_workload(study.user_attrs[attrs.WORKLOAD]).metrics
    metric = selection_metric(study, heldout)
    return choose(study, front, metric=metric, direction=directions.get(metric, "maximize"))[0]


def heldout_or_error(study: optuna.Study) -> HeldOut:
    workload = study.user_attrs.get(attrs.WORKLOAD)
    heldout = heldout_of(workload)
    if heldout is None:
        raise UserError(f"workload {workload!r} of study {study.study_name!r} has no held-out "
                        f"test period yet; only {', '.join(_with_test_period())} studies can "
                        "be evaluated")
    return heldout


def evaluate_study(study: optuna.Study, *, output: Path, force: bool = False,
                   reopen: bool = False, pbo_blocks: int = EvaluateSpec.pbo_blocks,
                   test_model: str = DEFAULT_TEST_MODEL, seeds: int = 1) -> Evaluation:
    """Predict the test period for the chosen trials and write the report (module docstring).

    ``output`` is the study's ``--output`` directory: trial directories, the feature cache and
    the report all live under it. ``force`` recomputes even when the report is up to date.
    The first look at the test period is recorded in the study user attr ``test_openings``;
    a later look at another front or other models raises :class:`ReopenRequired` unless
    ``reopen``, and is recorded too. Recomputing figures already seen is not a new look.
    """
    bad = EvaluateSpec(pbo_blocks=pbo_blocks, test_model=test_model, seeds=seeds).problems()
    if bad:  # before anything is loaded
        raise UserError("; ".join(f"{key} {problem}" for key, problem in bad))
    heldout = heldout_or_error(study)
    front = best_trials(study)
    if not front:
        raise UserError(f"study {study.study_name!r} has no complete trial yet; nothing to "
                        "evaluate")
    workload = get_workload(study.user_attrs[attrs.WORKLOAD])
    metric = selection_metric(study, heldout)
    chosen, rule = choose(study, front, metric=metric,
                          direction=workload.metrics.get(metric, "maximize"))
    out_dir = Path(output) / study.study_name
    dirs = {t.number: trial_dir(output, study.study_name, t.number) for t in front}
    trained = {n: heldout.load(d) for n, d in dirs.items()}
    try:
        heldout.check(trained[chosen.number])
    except UserError as exc:
        raise UserError(f"study {study.study_name!r} {exc}") from None
    digests = {n: heldout.digest(d) for n, d in dirs.items()}
    sharpes = searched_sharpes(study, metric=deflated_metric(metric))
    identity = {**_identity(study, front, chosen, digests, sharpes), "pbo_blocks": pbo_blocks}
    if test_model != DEFAULT_TEST_MODEL:  # reports made before the setting keep their id
        identity["test_model"] = test_model
    if seeds > 1:
        identity["seeds"] = seeds
    rid = report_id(identity)
    look = report_id({k: identity[k] for k in LOOK_KEYS})
    report_path = out_dir / REPORT_FILE
    if not force and _existing_id(out_dir) == rid:
        return Evaluation(json.loads(report_path.read_text()), report_path, changed=False)
    seen = test_openings(study)
    new_look = look not in {o.get("look_id") for o in seen}
    if seen and new_look and not reopen:
        raise ReopenRequired(reopen_message(study, seen))

    report = _build_report(study, front, chosen, rule, heldout, dirs=dirs, trained=trained,
                           output=Path(output), identity=identity, rid=rid, sharpes=sharpes,
                           pbo_blocks=pbo_blocks, metric=metric, test_model=test_model,
                           seeds=seeds)
    preds = report.pop("_predictions")
    sheet_frames = report.pop("_sheet_frames")
    buf = io.BytesIO()
    preds.write_parquet(buf)
    data = buf.getvalue()
    report["files"] = {"test_predictions": PREDICTIONS_FILE,
                       "test_predictions_sha256": _sha256(data)}
    # Predictions first: a report never points at predictions that are not on disk.
    atomic_write_bytes(out_dir / PREDICTIONS_FILE, data)
    if new_look:  # recorded before anything shows the figures
        seen = record_opening(study, seen, front=front, chosen=chosen, report_id=rid,
                              look_id=look)
    report["test_openings"] = seen
    if heldout.supports("tear_sheet"):
        report["files"]["tear_sheet"] = TEAR_SHEET
        paths = heldout.tear_sheet(sheet_frames, trained[chosen.number], out_dir,
                                   f"{study.study_name}: trial {chosen.number} on the test "
                                   "period", render_lines(summary_of(report)))
        attach_tear_sheet(study, paths, output=Path(output))
    atomic_write_json(report_path, report)
    report = json.loads(report_path.read_text())  # as readers see it: NaN stored as null
    publish_summary(study, report)
    return Evaluation(report, report_path, changed=True)


def attach_tear_sheet(study: optuna.Study, paths: list[Path], *, output: Path) -> None:
    """Upload the tear sheet's files as study artifacts (the store ``hpo.dashboard`` serves),
    so optuna-dashboard lists them on the study's page. Best effort, as every artifact: the
    files are on disk whatever happens here."""
    from hpo.artifacts import artifact_store

    try:
        store = artifact_store(output)
        for path in paths:
            optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path),
                                             study_or_trial=study)
    except Exception as exc:  # noqa: BLE001 - a broken upload must not lose the report
        log.warning("study %s: could not attach the tear sheet: %s: %s", study.study_name,
                    type(exc).__name__, exc)


def _build_report(study: optuna.Study, front: list[FrozenTrial], chosen: FrozenTrial,
                  rule: str, heldout: HeldOut, *, dirs: dict[int, Path],
                  trained: dict[int, Any], output: Path, identity: dict[str, Any], rid: str,
                  sharpes: dict[int, float], pbo_blocks: int = EvaluateSpec.pbo_blocks,
                  metric: str = DSR_METRIC, test_model: str = DEFAULT_TEST_MODEL,
                  seeds: int = 1) -> dict[str, Any]:
    names = metric_names(study)
    recorded = study.user_attrs.get(DATE_SPLIT)
    trials, frames = [], []
    boot: dict[str, int] = {}
    chosen_val = chosen_test = chosen_pred = None
    for t in front:
        model = trained[t.number]
        prediction = heldout.predict(dirs[t.number], model, output / "cache")
        split = dict(prediction.split)
        if recorded is not None and recorded != split:
            raise UserError(f"trial {t.number}'s data now splits into {split}, the study was "
                            f"run on {recorded}: the data changed since; evaluate with the "
                            "data the study was run on")
        alternatives = dict((prediction.context or {}).get("test_models") or {})
        if test_model in alternatives:  # the walk-forward trial's fold ensemble, or its last
            prediction = dataclasses.replace(prediction, frame=alternatives[test_model])
        val_frame = heldout.validation(dirs[t.number])
        validation, boot = heldout.score(val_frame, model)
        scored = {name: heldout.score(frame, model)[0] for name, frame in alternatives.items()}
        test = scored.get(test_model) or heldout.score(prediction.frame, model)[0]
        row = {"number": t.number, "chosen": t.number == chosen.number,
               "values": dict(zip(names, t.values, strict=False)),
               "params": t.params, "validation": validation, "test": test}
        if alternatives:
            row["test_model"] = test_model if test_model in alternatives else "last_fold"
            row["test_models"] = scored
            if t.number == chosen.number and len(alternatives) == 2:
                a, b = (alternatives[n] for n in ("fold_ensemble", "last_fold"))
                row["fold_ensemble_minus_last_fold"] = (
                    heldout.compare(a, b, model) if heldout.supports("compare") else None)
        trials.append(row)
        frames.append(prediction.frame.with_columns(pl.lit(t.number, pl.Int64).alias("trial"))
                      .select("trial", "date", "code", "pred", "target"))
        if t.number == chosen.number:
            chosen_val, chosen_test, chosen_pred = val_frame, prediction.frame, prediction
    assert chosen_pred is not None
    model = trained[chosen.number]
    chosen_row = next(r for r in trials if r["chosen"])
    ranges = dict(chosen_pred.split)
    dsr = psr = pbo = None
    correlation = None
    if heldout.supports("returns"):
        matrix, columns, left_out = validation_returns(study, heldout, output,
                                                       sorted(sharpes), model)
        pbo = overfitting(matrix, columns, blocks=pbo_blocks, left_out=left_out)
        from trainers.metrics.overfitting import effective_trials

        correlation = effective_trials(matrix)["mean_correlation"] if columns else None
    deflated = deflated_metric(metric)
    if heldout.supports("moments") and deflated in chosen_row["validation"]:
        by_state: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False, states=COUNTED_STATES):
            if t.number in sharpes:
                by_state[t.state.name.lower()] = by_state.get(t.state.name.lower(), 0) + 1
        net = {"net": True} if deflated == "sharpe_net" else {}
        label = (f"net Sharpe (of {scoring_cost(model, heldout):g} bps)" if net
                 else "Sharpe (gross)")
        dsr = deflation(chosen_row["validation"][deflated]["value"],
                        heldout.moments(chosen_val, model, **net), sharpes=sharpes,
                        correlation=correlation, states=by_state, label=label,
                        metric=deflated, returns=returns_of(heldout, chosen_val, model,
                                                             chosen, net=bool(net)))
        psr = psr_of_test(chosen_row["test"][deflated]["value"],
                          heldout.moments(chosen_test, model, **net), label=label)
    baselines = heldout.baselines(model, chosen_pred) if heldout.supports("baselines") else None
    baseline_frames = baselines.pop("frames", None) if baselines else None
    directions = get_workload(study.user_attrs[attrs.WORKLOAD]).metrics
    versus_all = versus_baselines(heldout, model, baselines, baseline_frames,
                                  {"validation": chosen_val, "test": chosen_test})
    versus = best_of(versus_all, baselines, metric=metric,
                     direction=directions.get(metric, "maximize"))
    blend = blend_with_baseline(heldout, model, {"validation": chosen_val, "test": chosen_test},
                                baselines, baseline_frames)
    blend_rows = blend.pop("_frame") if blend else None
    ensemble = None
    if seeds > 1:
        from hpo.heldout.seeds import seeds_ensemble

        ensemble = seeds_ensemble(chosen, heldout, model, chosen_pred,
                                  trial_dir=dirs[chosen.number],
                                  out_dir=output / study.study_name, cache_dir=output / "cache",
                                  n_seeds=seeds)
        ensemble.pop("_frame", None)
    costs = None
    if heldout.supports("costs"):
        costs = {"chosen": {period: heldout.costs(frame, model) for period, frame in
                            (("validation", chosen_val), ("test", chosen_test))},
                 "baselines_test": {
                     str((baselines or {}).get("test", {}).get(name, {}).get("label", name)):
                     heldout.costs(frame, model)
                     for name, frame in ((baseline_frames or {}).get("test") or {}).items()}}
    return {
        "study": study.study_name,
        "report_id": rid,
        "identity": identity,
        "split": ranges,
        "validation_dates": ranges.get("val"),
        "test_dates": ranges.get("test"),
        **(heldout.describe(model) if heldout.supports("describe") else {}),
        "objectives": names,
        "kind": "best_trial" if len(names) == 1 else "pareto_front",
        "chosen": chosen.number,
        "rule": rule,
        "standard_errors": (f"moving-block bootstrap over dates ({boot.get('n_boot')} "
                            f"replicates, blocks of {boot.get('block_length')} dates, seed "
                            f"{boot.get('seed')})"),
        "bootstrap": boot,
        "table_metrics": list(heldout.table),
        "trials": trials,
        "deflated_sharpe": dsr,
        "costs": costs,
        "seeds_ensemble": ensemble,
        "blend": blend,
        "pbo": pbo,
        "test_psr": psr,
        "baselines": baselines,
        "versus_baseline": versus,
        "versus_baselines": versus_all,
        "_predictions": pl.concat(frames),
        "_sheet_frames": {f"trial {chosen.number} (chosen)": chosen_test,
                          **{str((baselines or {}).get("test", {}).get(name, {})
                                 .get("label", name)): frame
                             for name, frame in ((baseline_frames or {}).get("test")
                                                 or {}).items()},
                          **({f"chosen + {blend['with']} (blend)": blend_rows}
                             if blend_rows is not None else {})},
    }


# -- CLI --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "evaluate",
        "Predict the held-out test period with the chosen trials' saved models "
        "and write <output>/<study>/test_report.json and test_predictions.parquet. "
        "Example: python -m hpo.evaluate --study demo")
    add_study_flags(p, output="the study's output directory: trial models, feature cache, "
                    "embedded database; the report goes to <output>/<study>/ (default: output)")
    p.add_argument("--force", action="store_true",
                   help="recompute the report even when the existing one is up to date (the "
                   "figures already seen: never a new look at the test period)")
    p.add_argument("--pbo-blocks", type=int, default=EvaluateSpec.pbo_blocks,
                   help="blocks of the validation dates for the probability of backtest "
                   f"overfitting (even; default {EvaluateSpec.pbo_blocks})")
    p.add_argument("--test-model", choices=TEST_MODELS, default=DEFAULT_TEST_MODEL,
                   help="a walk-forward study's test row: the last fold's model or the fold "
                   "ensemble (both are in the report; default: the study file's [evaluate] "
                   f"test_model is used by hpo.run, {DEFAULT_TEST_MODEL} here)")
    p.add_argument("--seeds", type=int, default=1,
                   help="train the chosen configuration with this many seeds (the trial's own "
                   "and N - 1 more) and report their averaged scores on test beside the "
                   "single model (default 1: off; hpo.run uses [evaluate] seeds)")
    p.add_argument("--reopen", action="store_true",
                   help="look at the test period again after the front or its models changed "
                   "since it was opened; recorded in the study's test_openings")
    return p


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hpo.loading import study_for_command

    bad = EvaluateSpec(pbo_blocks=args.pbo_blocks, test_model=args.test_model,
                       seeds=args.seeds).problems()
    if bad:  # before anything is opened
        raise UserError("; ".join(f"--{key.replace('_', '-')} {problem}"
                                  for key, problem in bad))
    study = study_for_command(args.study, storage=args.storage, output=args.output)
    result = evaluate_study(study, output=args.output, force=args.force,
                            reopen=args.reopen, pbo_blocks=args.pbo_blocks,
                            test_model=args.test_model, seeds=args.seeds)
    state = "written" if result.changed else "unchanged (same front, models and split)"
    print(f"test report {result.path}: {state}")
    print("\n".join(render_lines(summary_of(result.report))))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
