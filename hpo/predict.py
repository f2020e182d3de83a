"""``python -m hpo.predict``: score a panel the study never saw with its chosen model.

Example, the daily job (append today's rows to the panel, score the last date):

    python -m hpo.predict --study production --source panel.parquet --out today.parquet

It works for any workload whose held-out capability can score new data (``HeldOut.score_new``),
which runs the workload's training pipeline on the panel. The file holds ``date, code, score,
rank, quantile`` (rank 1 = the highest score of its date; quantile 1-5, 5 = the top fifth),
parquet or CSV by the extension of ``--out``. It names the model it came from: in the parquet
schema metadata (key ``hpo``), for a CSV in ``<out>.meta.json``: the study, the trial, the
SHA-256 of its model file, the feature list, the source and the SHA-256 of its bytes, the dates
scored and those skipped for lack of history; with ``--model refit`` (the newest ``hpo.refit``)
also the refit's id, time and dates. A panel that does not fit the model is refused in
one line (exit 2) and nothing is written.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import optuna
import polars as pl

from hpo import attrs
from hpo.cli import EXIT_OK, add_study_flags, command_parser, one_line_errors
from hpo.study import trial_dir
from trainers.context import atomic_write_bytes
from trainers.errors import UserError
from trainers.heldout import file_digest

METADATA_KEY = b"hpo"
N_QUANTILES = 5
SUFFIXES = (".parquet", ".csv")


def with_ranks(frame: pl.DataFrame) -> pl.DataFrame:
    """``rank`` (1 = highest score of the date; ties by code) and ``quantile`` (1-5, 5 = the
    top fifth of the date), sorted by date and rank."""
    ranked = frame.sort(["date", "score", "code"], descending=[False, True, False]).with_columns(
        rank=pl.int_range(1, pl.len() + 1).over("date"), n=pl.len().over("date"))
    return ranked.with_columns(
        quantile=((pl.col("n") - pl.col("rank")) * N_QUANTILES // pl.col("n") + 1)
    ).select("date", "code", "score", "rank", "quantile").with_columns(
        pl.col("rank").cast(pl.Int64), pl.col("quantile").cast(pl.Int64))


def pick_trial(study: optuna.Study, model: str, heldout: Any) -> optuna.trial.FrozenTrial:
    """The trial ``--model`` names: ``chosen`` (the held-out report's rule) or ``trial:N``."""
    from hpo.evaluate import chosen_trial

    if model == "chosen":
        return chosen_trial(study, heldout)
    number = model.removeprefix("trial:")
    if not model.startswith("trial:") or not number.isdigit():
        raise UserError(f"--model must be chosen, trial:N or refit, got {model!r}")
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    t = trials.get(int(number))
    if t is None or t.state != optuna.trial.TrialState.COMPLETE:
        raise UserError(f"trial {number} of study {study.study_name!r} is not a complete trial")
    return t


def model_folder(study: optuna.Study, output: Path, model: str, heldout: Any
                 ) -> tuple[int, Path, dict[str, Any] | None]:
    """The trial number, model folder and (for ``refit``) refit entry that ``--model``
    names: ``chosen``, ``trial:N`` or ``refit`` (the newest ``hpo.refit``)."""
    if model == "refit":
        from hpo.refit import newest_refit

        refit_entry, folder = newest_refit(study, output)
        return int(refit_entry["trial"]), folder, refit_entry
    number = pick_trial(study, model, heldout).number
    return number, trial_dir(output, study.study_name, number), None


def predict(study: optuna.Study, *, source: Path, output: Path, out: Path, model: str = "chosen",
            dates: str = "last", fold_ensemble: bool = False,
            blend: bool = False) -> dict[str, Any]:
    """Score ``source`` and write ``out`` (module docstring); returns the metadata."""
    from hpo.evaluate import heldout_or_error

    if out.suffix.lower() not in SUFFIXES:
        raise UserError(f"--out {out} must end in .parquet or .csv")
    if not Path(source).is_file():
        raise UserError(f"--source {source} does not exist")
    heldout = heldout_or_error(study)
    if not heldout.supports("score_new"):
        raise UserError(f"workload {study.user_attrs.get(attrs.WORKLOAD)!r} cannot score new "
                        "data yet")
    if blend and not heldout.supports("baseline_new"):
        raise UserError(f"workload {study.user_attrs.get(attrs.WORKLOAD)!r} cannot score its "
                        "baselines on new data; drop --blend")
    if blend and model == "refit":
        raise UserError("--blend averages with ridge fitted on the study's training dates, as "
                        "the report's blend; a refit model was trained on later dates: drop "
                        "--blend or --model refit")
    trial_number, folder, refit_entry = model_folder(study, output, model, heldout)
    trained = heldout.load(folder)
    scored = heldout.score_new(trained, str(source), dates, Path(output) / "cache")
    members: list[str] = []
    if fold_ensemble:
        scored, members = _fold_ensemble(heldout, folder, trial_number, scored, source=source,
                                         dates=dates, cache_dir=Path(output) / "cache")
    blended = None
    if blend:
        scored, blended = _blend(study, heldout, trained, trial_number, scored,
                                 cache_dir=Path(output) / "cache")
    frame = with_ranks(scored.frame)
    meta = {"study": study.study_name, "workload": study.user_attrs.get(attrs.WORKLOAD),
            "trial": trial_number, "model": model, "model_sha256": heldout.digest(folder),
            "features": list(trained.feature_names), "source": str(source),
            "source_sha256": file_digest(Path(source)), "dates": scored.dates,
            "skipped_for_history": scored.skipped, "rows": frame.height,
            "columns": {"score": "the model's cross-sectional score for the scored horizon "
                                 "(trained on per-date z-scored returns: it ranks the "
                                 "date's stocks, higher = expected to do better; not a "
                                 "return forecast)",
                        "rank": "1 = the highest score of its date",
                        "quantile": f"1-{N_QUANTILES}, {N_QUANTILES} = the top fifth"}}
    if members:
        meta["fold_ensemble"] = {
            "members_sha256": members,
            "score": "the mean of the fold models' per-date z-scored predictions"}
    if blended is not None:
        meta["blend"] = blended
        meta["columns"]["score"] = ("the mean of the model's and the baseline "
                                    f"{blended['with']!r}'s per-date z-scored scores, equal "
                                    "weights (the report's blend)")
    if refit_entry is not None:
        meta["refit"] = {k: refit_entry[k] for k in ("id", "time", "through", "fit", "epochs")}
    if out.suffix.lower() == ".parquet":
        table = frame.to_arrow()
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(table, buf)
        atomic_write_bytes(out, buf.getvalue(), durable=False)
    else:
        buf = io.BytesIO()
        frame.write_csv(buf)
        atomic_write_bytes(Path(f"{out}.meta.json"), json.dumps(meta, indent=1).encode(),
                           durable=False)
        atomic_write_bytes(out, buf.getvalue(), durable=False)
    return meta


def _fold_ensemble(heldout: Any, folder: Path, trial_number: int, scored: Any, *, source: Path,
                   dates: str, cache_dir: Path) -> tuple[Any, list[str]]:
    """The scores of every fold model of a walk-forward trial, averaged as standardised
    per-date scores (the model its validation figures describe); the members' SHA-256."""
    import dataclasses

    from trainers.heldout import ensemble_scores

    found = heldout.members(folder) if heldout.supports("members") else []
    if len(found) < 2:
        raise UserError(f"trial {trial_number} has no fold models to average (a holdout trial, "
                        "or one trained before fold models were kept); drop --fold-ensemble")
    frames = [heldout.score_new(m, str(source), dates, cache_dir).frame for _, m in found]
    ensemble = ensemble_scores(frames, column="score")
    return (dataclasses.replace(scored, frame=ensemble),
            [file_digest(path) for path, _ in found])


def _blend(study: optuna.Study, heldout: Any, trained: Any, trial_number: int, scored: Any, *,
           cache_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The model's scores averaged with ridge's as the report's blend does
    (``hpo.heldout.blend``): ridge fitted on the trial's training dates, both z-scored per
    date, equal weights; the rows both scored."""
    import dataclasses

    from hpo.heldout.blend import BLENDED_BASELINE
    from hpo.records import trial_attrs
    from trainers.attrs import DATE_SPLIT
    from trainers.heldout import ensemble_scores

    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == trial_number)
    split = trial_attrs(trial).get(DATE_SPLIT)
    if not split:
        raise UserError(f"trial {trial_number} recorded no date split; rerun the study")
    base = heldout.baseline_new(trained, scored, split, cache_dir, BLENDED_BASELINE)
    model = scored.frame.rename({"score": "pred"})
    both = ensemble_scores([model, base]).rename({"pred": "score"})
    return dataclasses.replace(scored, frame=both), {
        "with": BLENDED_BASELINE, "weights": {"model": 0.5, BLENDED_BASELINE: 0.5},
        "fitted_on": {k: v for k, v in split.items() if k in ("train", "val")},
        "rows_dropped": model.height - both.height}


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata of a scores file written by :func:`predict`."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return json.loads(Path(f"{path}.meta.json").read_text())
    import pyarrow.parquet as pq

    return json.loads(pq.read_schema(path).metadata[METADATA_KEY])


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "predict",
        "Score a panel the study never saw with the chosen trial's model, through "
        "the training pipeline; writes date, code, score, rank, quantile. Example: python -m "
        "hpo.predict --study production --source panel.parquet --dates last --out today.parquet")
    add_study_flags(p, output="the study's output directory: trial models and feature cache "
                    "(default: output)")
    p.add_argument("--source", required=True, type=Path,
                   help="the panel to score (parquet or CSV, the schema of the study's panel; "
                   "target columns may be absent)")
    p.add_argument("--out", required=True, type=Path,
                   help="the scores file: .parquet or .csv (metadata beside it as .meta.json)")
    p.add_argument("--model", default="chosen",
                   help="chosen (the held-out report's rule), trial:N, or refit (the newest "
                   "hpo.refit of the chosen configuration) (default: chosen)")
    p.add_argument("--fold-ensemble", action="store_true",
                   help="a walk-forward trial: score with the mean of every fold model's "
                   "standardised scores instead of the last fold's model")
    p.add_argument("--blend", action="store_true",
                   help="score with the held-out report's blend: the mean of the model's and "
                   "ridge's per-date z-scores (ridge fitted on the study's training dates)")
    p.add_argument("--dates", default="last",
                   help="last, all or START:END (ISO dates, inclusive; default: last)")
    return p


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hpo.loading import study_for_command

    study = study_for_command(args.study, storage=args.storage, output=args.output)
    meta = predict(study, source=args.source, output=args.output, out=args.out,
                   model=args.model, dates=args.dates, fold_ensemble=args.fold_ensemble,
                   blend=args.blend)
    skipped = (f"; skipped for lack of history: {', '.join(meta['skipped_for_history'])}"
               if meta["skipped_for_history"] else "")
    print(f"scored {meta['rows']} rows on {len(meta['dates'])} date(s) "
          f"({meta['dates'][0]} to {meta['dates'][-1]}) with trial {meta['trial']} "
          f"(model {meta['model_sha256'][:12]}) -> {args.out}{skipped}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
