"""``python -m hpo.status --study NAME``: where a study stands, read live from its storage.

Example:
    python -m hpo.status --study production --watch 30
    python -m hpo.status --study demo --json
    python -m hpo.status --study demo --trial 7      # one trial's per-epoch metrics

Shows the trial states, progress toward the study-wide target (the ``n_trials_target`` user
attr), an ETA from observed trial durations and the number of live workers, each running trial
with its current epoch and last heartbeat, zombies (RUNNING trials whose worker stopped sending
heartbeats), and the best trial or the Pareto front so far. Everything is read from storage on
each call, never from a results file, so it cannot show a previous run's numbers.
Exit codes: 0 ok, 2 a user error (one line ``error: ...``), 130 ``--watch`` ended by Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import attrs
from hpo.cli import add_study_flags, command_parser, one_line_errors
from hpo.heldout import current_summary, render_lines, stale_line
from hpo.loading import open_existing_study
from hpo.progress import evaluate_command
from hpo.pruning import epochs_saved
from hpo.records import record, trial_attrs
from hpo.results import best_trials, metric_names, trial_counts
from hpo.storage import mask_url
from trainers.errors import UserError

EXIT_OK, EXIT_USER, EXIT_INTERRUPTED = 0, 2, 130
DEFAULT_WATCH_S = 10.0
_sleep = time.sleep  # replaced in tests


# -- heartbeats -------------------------------------------------------------------------------
def heartbeat_ages(storage: optuna.storages.BaseStorage, study_id: int) -> dict[int, float]:
    """Seconds since the last heartbeat of each RUNNING trial that has one, by trial number.

    Read from Optuna's ``trial_heartbeats`` table, with "now" taken from the database clock
    (as Optuna's own stale-trial check does), so the clocks of the watching host and of the
    workers never mix. Trials of a study run without heartbeats have no row and are absent.
    Through the storage proxy it is the trial system attr ``hpo:heartbeat`` against this
    host's clock (the proxy has no heartbeat table).
    """
    import sqlalchemy

    engine = getattr(storage, "engine", None)
    if engine is None:  # behind the proxy (hpo.storage.remote): the heartbeat attr, this clock
        import time

        from hpo.storage.remote import HEARTBEAT_ATTR

        now = time.time()
        running = storage.get_all_trials(study_id, deepcopy=False,
                                         states=(optuna.trial.TrialState.RUNNING,))
        return {t.number: max(0.0, now - beat) for t in running
                if isinstance(beat := t.system_attrs.get(HEARTBEAT_ATTR), int | float)}
    query = sqlalchemy.text(
        "SELECT t.number, h.heartbeat FROM trials t "
        "JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "WHERE t.study_id = :study_id AND t.state = 'RUNNING'"
    ).columns(sqlalchemy.column("number", sqlalchemy.Integer),
              sqlalchemy.column("heartbeat", sqlalchemy.DateTime))
    with engine.connect() as conn:
        now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
        rows = conn.execute(query, {"study_id": study_id}).all()
    # PostgreSQL answers now() with a time zone, the column has none (same as Optuna's check).
    now = now.replace(tzinfo=None)
    return {int(n): max(0.0, (now - hb).total_seconds()) for n, hb in rows}


def default_grace_period(study_name: str) -> tuple[int, str]:
    """The grace period of ``studies/<name>.toml`` when it exists, else the StudySpec default."""
    from hpo.config import StorageSpec, load_study_spec

    try:
        spec = load_study_spec(study_name, check_workload=False)
        if spec.name == study_name:
            return spec.storage.grace_period, str(spec.path)
    except (UserError, OSError):
        pass
    return StorageSpec().grace_period, "default"


# -- the status itself ------------------------------------------------------------------------
# A running trial's share of its run below this says too little to estimate a trial's length.
MIN_PROGRESS_SHARE = 0.02


def estimate_eta(*, remaining: int, durations: list[float], running_elapsed: list[float],
                 workers: int) -> float | None:
    """Seconds until ``remaining`` more trials finish, or None when there is nothing to go on.

    Each live worker runs one trial at a time: the work left is ``remaining`` mean trial
    durations minus what the running trials have already done (each capped at the mean),
    shared by the live workers.
    """
    if remaining <= 0:
        return 0.0
    if not durations or workers <= 0:
        return None
    mean = sum(durations) / len(durations)
    done = sum(min(e, mean) for e in running_elapsed)
    return max(0.0, remaining * mean - done) / workers


def progress_fraction(progress: dict[str, Any] | None) -> float | None:
    """The share of its whole run a trial had done at its latest progress record: its epochs
    before this one plus this epoch's training share (validation counts as the epoch done);
    None without an epoch to go on."""
    if not isinstance(progress, dict):
        return None
    epoch, epochs = progress.get("epoch"), progress.get("epochs")
    done, total = progress.get("done") or 0, progress.get("total") or 0
    if not (isinstance(epoch, int) and isinstance(epochs, int) and epochs > 0):
        return None
    within = 1.0 if progress.get("phase") != "train" else (done / total if total else 0.0)
    return min(1.0, max(0.0, (epoch - 1 + within) / epochs))


def progress_line(progress: dict[str, Any] | None) -> str | None:
    """The progress record as ``hpo.status`` prints it (``trainers.progress``)."""
    if not isinstance(progress, dict):
        return None
    from trainers.progress import ProgressRecord

    try:
        return ProgressRecord(**progress).line()
    except TypeError:  # a record written by another version
        return None


def _values(names: list[str], trial: FrozenTrial) -> dict[str, float]:
    return dict(zip(names, trial.values or [], strict=False))


def _total_epochs(study: optuna.Study, trial: FrozenTrial) -> int | None:
    epochs = trial.params.get("epochs")
    if epochs is None:
        epochs = (record(study, attrs.SPEC) or {}).get("fixed", {}).get("epochs")
    return int(epochs) if isinstance(epochs, int | float) else None


# Failed trials listed with their reasons, newest first; the rest are counted only.
SHOWN_FAILURES = 3
# A trial that ended FAIL without a fail_reason: its worker never got to write one.
NO_REASON = "no reason recorded (its worker stopped: killed, or its heartbeat expired)"


def failures(trials: list[FrozenTrial], *, limit: int = SHOWN_FAILURES) -> list[dict[str, Any]]:
    """The newest ``limit`` failed trials (surplus ones are not failures) and their reasons."""
    failed = [t for t in trials
              if t.state == TrialState.FAIL and not t.user_attrs.get(attrs.SURPLUS)
              and not t.user_attrs.get(attrs.STOPPED_BY)
              and not t.user_attrs.get(attrs.ENVIRONMENT_FAULT)]
    return [{"number": t.number, "reason": t.user_attrs.get(attrs.FAIL_REASON) or NO_REASON}
            for t in sorted(failed, key=lambda t: -t.number)[:limit]]


def collect_status(study: optuna.Study, storage: optuna.storages.BaseStorage, *,
                   grace_period: float, url: str = "", output: Path | None = None,
                   now: datetime | None = None) -> dict[str, Any]:
    """Everything ``hpo.status`` shows, as a JSON-able dict (the ``--json`` output)."""
    now = now or datetime.now()
    names = metric_names(study)
    trials = study.get_trials(deepcopy=False)
    counts = trial_counts(trials)
    finished = counts["complete"] + counts["pruned"]
    target = study.user_attrs.get(attrs.TARGET)
    durations = [t.duration.total_seconds() for t in trials
                 if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.duration]

    ages = heartbeat_ages(storage, study._study_id)
    running = []
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        age = ages.get(t.number)
        history = trial_attrs(t).get(attrs.HISTORY) or []
        running.append({
            "number": t.number,
            "epoch": t.user_attrs.get(attrs.EPOCH),
            "epochs": _total_epochs(study, t),
            "worker": t.user_attrs.get(attrs.WORKER),
            "elapsed_s": (now - t.datetime_start).total_seconds() if t.datetime_start else None,
            "heartbeat_age_s": age,
            "zombie": age is not None and age > grace_period,
            "latest": {k: v for k, v in (history[-1] if history else {}).items()
                       if k != "epoch"},
            "progress": t.user_attrs.get(attrs.PROGRESS),
            "params": t.params,
        })
    live = [r for r in running if not r["zombie"]]
    workers = len({r["worker"] or f"trial {r['number']}" for r in live})
    remaining = max(0, target - finished) if isinstance(target, int) else None
    eta = None
    if remaining is not None:
        basis = list(durations)
        if not basis:  # no finished trial yet: a running trial's progress says how long one takes
            for r in live:
                share = progress_fraction(r["progress"])
                if share and share >= MIN_PROGRESS_SHARE and r["elapsed_s"]:
                    basis.append(r["elapsed_s"] / share)
        eta = estimate_eta(remaining=remaining, durations=basis, workers=workers,
                           running_elapsed=[r["elapsed_s"] or 0.0 for r in live])
    best = best_trials(study)
    test_report, current = current_summary(study)
    return {
        "study": study.study_name,
        "storage": mask_url(url),
        "workload": study.user_attrs.get(attrs.WORKLOAD),
        "metric_names": names,
        "directions": [d.name.lower() for d in study.directions],
        "target": target,
        "finished": finished,
        "counts": counts,
        "epochs_saved": epochs_saved(trials)[1],
        "mean_trial_s": sum(durations) / len(durations) if durations else None,
        "observed_trials": len(durations),
        "live_workers": workers,
        "eta_s": eta,
        "grace_period_s": grace_period,
        "running": running,
        "zombies": [r["number"] for r in running if r["zombie"]],
        "failures": failures(trials),
        "best_kind": "best_trial" if len(names) == 1 else "pareto_front",
        "best": [{"number": t.number, "values": _values(names, t), "params": t.params}
                 for t in best],
        # hpo.evaluate's summary: validation and test figures, each labelled (None = the
        # test period was never opened); "test_report_current" is False once the front moved.
        "test_report": test_report,
        "test_report_current": current,
        "evaluate_command": (evaluate_command(url, study.study_name, output)
                             if url and output is not None else None),
        # hpo.refit: the newest refit of the chosen configuration (None before the first).
        "refits": len(study.user_attrs.get(attrs.REFITS) or []),
        "latest_refit": (study.user_attrs.get(attrs.REFITS) or [None])[-1],
    }


# -- text rendering ---------------------------------------------------------------------------
def _dur(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]]


def render(status: dict[str, Any]) -> str:
    s = status
    c = s["counts"]
    lines = [f"study {s['study']} ({s['workload'] or '?'}) on {s['storage']}",
             "objectives: " + ", ".join(f"{n} ({d})" for n, d in
                                        zip(s["metric_names"], s["directions"], strict=False))]
    target = s["target"]
    if isinstance(target, int) and target > 0:
        share = min(1.0, s["finished"] / target)
        bar = "#" * round(20 * share) + "." * (20 - round(20 * share))
        progress = f"progress: {s['finished']}/{target} finished ({share:.0%}) [{bar}]"
    else:
        progress = f"progress: {s['finished']} finished (no target stored)"
    lines.append(progress)
    saved = f" (saved {s['epochs_saved']} epochs)" if s["epochs_saved"] else ""
    stops = "".join(f", {c[k]} {k}" for k in ("preempted", "interrupted") if c.get(k))
    if c.get("environment"):
        stops += f", {c['environment']} stopped by the environment (disk, filesystem)"
    lines.append(f"trials: {c['complete']} complete, {c['pruned']} pruned{saved}, "
                 f"{c['failed']} failed{stops}, "
                 f"{c['running']} running, {c['waiting']} waiting"
                 + (f" ({c['surplus']} surplus)" if c["surplus"] else ""))
    if s["eta_s"] == 0.0:
        eta = "eta: done"
    elif s["eta_s"] is not None:
        eta = (f"eta: {_dur(s['eta_s'])} (mean trial {_dur(s['mean_trial_s'])} over "
               f"{s['observed_trials']} trials, {s['live_workers']} live worker(s))")
    elif s["live_workers"] == 0:
        eta = (f"eta: ? (no live worker; start one with python -m hpo.run --study "
               f"{s['study']})")
    else:
        eta = "eta: ? (no finished trial yet)"
    lines.append(eta)
    if s["running"]:
        lines.append("running:")
        rows = []
        for r in s["running"]:
            epoch = "-" if r["epoch"] is None else str(r["epoch"])
            if r["epochs"] is not None and r["epoch"] is not None:
                epoch += f"/{r['epochs']}"
            beat = "-" if r["heartbeat_age_s"] is None else f"{_dur(r['heartbeat_age_s'])} ago"
            latest = " ".join(f"{k}={_num(v)}" for k, v in r["latest"].items())
            rows.append([str(r["number"]), epoch, r["worker"] or "-", _dur(r["elapsed_s"]),
                         beat + (" ZOMBIE" if r["zombie"] else ""), latest])
        lines += _table(["trial", "epoch", "worker", "elapsed", "heartbeat", "latest"], rows)
        for r in s["running"]:
            line = progress_line(r.get("progress"))
            if line:
                lines.append(f"  trial {r['number']}: {line} (as of "
                             f"{r['progress'].get('time', '?')})")
    if s["zombies"]:
        numbers = ", ".join(str(n) for n in s["zombies"])
        lines.append(f"zombies: trial(s) {numbers} have sent no heartbeat for more than "
                     f"{s['grace_period_s']:g} s (their worker died); the next worker to start "
                     "a trial marks them failed and queues their retry")
    for f in s.get("failures") or []:
        lines.append(f"failed: trial {f['number']}: {f['reason']}")
    if s["best"]:
        names = s["metric_names"]
        params = list(dict.fromkeys(p for b in s["best"] for p in b["params"]))
        title = "best trial" if s["best_kind"] == "best_trial" else \
            f"Pareto front ({len(s['best'])} trials)"
        lines.append(f"{title}:")
        lines += _table(["trial", *names, *params],
                        [[str(b["number"]), *(_num(b["values"].get(n)) for n in names),
                          *(_num(b["params"].get(p, "-")) for p in params)] for b in s["best"]])
    else:
        lines.append("best: no complete trial yet")
    if s.get("test_report") is not None:
        if s.get("test_report_current"):
            lines += render_lines(s["test_report"])
        else:
            lines.append(stale_line(s["test_report"], s.get("evaluate_command") or
                                    f"python -m hpo.evaluate --study {s['study']}"))
    latest = s.get("latest_refit")
    if latest:
        lines.append(f"refits: {s['refits']}, newest {latest['id']} of trial {latest['trial']} "
                     f"at {latest['time']}: {latest['epochs']} epoch(s) on {latest['fit_dates']} "
                     f"dates through {latest['through']} (hpo.predict --model refit)")
    return "\n".join(lines)


def trial_history(study: optuna.Study, number: int) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    match = [t for t in trials if t.number == number]
    if not match:
        raise UserError(f"--trial {number}: study {study.study_name!r} has trials "
                        f"0..{len(trials) - 1}" if trials else
                        f"--trial {number}: study {study.study_name!r} has no trials yet")
    t = match[0]
    return {"study": study.study_name, "number": t.number, "state": t.state.name,
            "values": _values(metric_names(study), t) if t.values else None,
            "params": t.params, "history": trial_attrs(t).get(attrs.HISTORY) or []}


def render_history(record: dict[str, Any]) -> str:
    lines = [f"study {record['study']} trial {record['number']} ({record['state']})"]
    history = record["history"]
    if not history:
        return "\n".join([*lines, "no per-epoch metrics recorded"])
    keys = ["epoch", *dict.fromkeys(k for row in history for k in row if k != "epoch")]
    lines += _table(keys, [[_num(row.get(k, "-")) for k in keys] for row in history])
    return "\n".join(lines)


# -- CLI --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "status",
        "Progress, ETA, running trials, zombies and best values of a study, read "
        "live from its storage. Example: python -m hpo.status --study demo --watch 30")
    add_study_flags(p, output="directory holding the embedded database (default: output)")
    p.add_argument("--watch", nargs="?", type=float, const=DEFAULT_WATCH_S, default=None,
                   metavar="SECONDS", help="redraw every SECONDS (default "
                   f"{DEFAULT_WATCH_S:g}) until Ctrl-C, e.g. --watch 30")
    p.add_argument("--json", action="store_true",
                   help="machine-readable output (one JSON object per line with --watch)")
    p.add_argument("--trial", type=int, default=None, metavar="N",
                   help="show trial N's per-epoch metrics instead, e.g. --trial 7")
    p.add_argument("--grace-period", type=float, default=None, metavar="SECONDS",
                   help="heartbeat age after which a RUNNING trial counts as a zombie "
                   "(default: the study file's [storage] grace_period, else 120)")
    return p


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.watch is not None and args.watch <= 0:
        raise UserError(f"--watch must be > 0 seconds, got {args.watch:g}")
    if args.grace_period is not None and args.grace_period <= 0:
        raise UserError(f"--grace-period must be > 0 seconds, got {args.grace_period:g}")
    study, storage, url = open_existing_study(args.study, storage=args.storage,
                                              output=args.output)
    grace = args.grace_period
    if grace is None:
        grace = float(default_grace_period(args.study)[0])
    return _loop(args, study, storage, url, grace)


def _show(args: argparse.Namespace, study: optuna.Study, storage: Any, url: str,
          grace: float) -> None:
    if args.trial is not None:
        record = trial_history(study, args.trial)
        text = json.dumps(record) if args.json else render_history(record)
    else:
        status = collect_status(study, storage, grace_period=grace, url=url,
                                output=args.output)
        text = json.dumps(status) if args.json else render(status)
    if args.watch is not None and not args.json and sys.stdout.isatty():
        print("\x1b[H\x1b[2J", end="")  # clear the terminal before redrawing
    elif args.watch is not None and not args.json:
        print(f"--- {datetime.now():%Y-%m-%d %H:%M:%S}")
    print(text, flush=True)


def _loop(args: argparse.Namespace, study: optuna.Study, storage: Any, url: str,
          grace: float) -> int:
    import sqlalchemy.exc

    # "The database is unreachable right now" (Optuna wraps SQLAlchemy errors in its own).
    outage = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
              optuna.exceptions.StorageInternalError)
    if args.watch is None:
        _show(args, study, storage, url, grace)
        return EXIT_OK
    try:
        while True:
            try:
                _show(args, study, storage, url, grace)
            except outage as exc:
                # A database restart during an overnight watch: say so and keep watching.
                text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
                reason = text[0] if text else type(exc).__name__
                print(f"storage {mask_url(url)} unreachable ({reason}); retrying in "
                      f"{args.watch:g} s", file=sys.stderr, flush=True)
            _sleep(args.watch)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
