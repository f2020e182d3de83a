"""``python -m hpo.monitor``: does the live signal still behave like the validated one?

The morning job, once new dates' returns are realised (append them to the panel file):

    python -m hpo.monitor --study production --source panel.parquet

With the chosen model (``--model refit``: the newest ``hpo.refit``; ``trial:N``), it scores
every date of ``--source`` after the study's test period whose scored-horizon return is
realised, and the best single feature and the ridge fit (fitted as the test report fits them)
on the same rows, through the study's book (the workload's ``HeldOut.live``). Each date's
figures (RankIC, long-short gross and net, turnover) are appended to the history
``<output>/<study>/monitor/monitor.parquet``, once: a date already there is never scored again
(the model that scored it is kept with it), so the history is what the signal did as it went.

Over the history it reports, for the model and each baseline, the mean RankIC, the annualised
Sharpe ratio gross and net of the study's cost and the mean turnover, each with its standard
error, beside the trial's validation figures computed the same way; and one verdict line:
below ``MIN_LIVE_DATES`` live dates "too few live dates to judge", else whether the live RankIC
is below the validation RankIC by more than 2 standard errors of the difference. Also writes
``monitor.png`` (cumulative RankIC and compounded net long-short of each series) and
``monitor.html`` (the table, the verdict and the chart). A panel that does not fit the model is
refused in one line (exit 2) and nothing is written.
"""

from __future__ import annotations

import html
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import polars as pl

from hpo.cli import EXIT_OK, OneLineParser, add_study_flags, command_parser, one_line_errors
from trainers.errors import UserError

FOLDER = "monitor"
HISTORY = "monitor.parquet"
CHART = "monitor.png"
PAGE = "monitor.html"
MIN_LIVE_DATES = 20  # below this the verdict says there is too little to judge
FIGURES = ("rank_ic", "long_short", "long_short_net", "turnover")


def merge_history(old: pl.DataFrame | None, series: dict[str, pl.DataFrame], *,
                  model_sha256: str, scored_at: str) -> tuple[pl.DataFrame, int]:
    """The history with every (series, date) not in ``old`` appended; the number of new
    dates of the model's series. Rows already there are kept as they were."""
    new = pl.concat([frame.with_columns(series=pl.lit(name), model_sha256=pl.lit(model_sha256),
                                        scored_at=pl.lit(scored_at))
                     .select("series", "date", *FIGURES, "model_sha256", "scored_at")
                     for name, frame in series.items()])
    new = new.with_columns(pl.col("date").cast(pl.Date), *[pl.col(f).cast(pl.Float64)
                                                           for f in FIGURES])
    if old is not None and old.height:
        new = new.join(old.select("series", "date"), on=["series", "date"], how="anti")
        merged = pl.concat([old, new])
    else:
        merged = new
    added = new.filter(pl.col("series") == "model").height
    return merged.sort("series", "date"), added


def _sharpe(values: np.ndarray, scale: float, n_eff: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if len(values) < 2 or values.std(ddof=1) == 0:
        return float("nan"), float("nan")
    per = values.mean() / values.std(ddof=1)
    return float(per * scale), float(math.sqrt((1 + per * per / 2) / max(n_eff, 1.0)) * scale)


def figures(days: pl.DataFrame, *, periods_per_year: float, horizon: int) -> dict[str, Any]:
    """Mean RankIC, Sharpe gross and net (annualised) and mean turnover of per-date figures,
    each ``{"value", "se"}`` (an h-date return counts one date in h for the errors)."""
    n = days.height
    n_eff = n / max(horizon, 1)
    scale = math.sqrt(periods_per_year / max(horizon, 1))
    out: dict[str, Any] = {"dates": n}
    for name in ("rank_ic", "turnover"):
        v = days[name].drop_nans().drop_nulls().to_numpy()
        se = float(v.std(ddof=1) / math.sqrt(max(len(v) / max(horizon, 1), 1.0))) \
            if len(v) > 1 else float("nan")
        out[name] = {"value": float(v.mean()) if len(v) else float("nan"), "se": se}
    for name, column in (("sharpe", "long_short"), ("sharpe_net", "long_short_net")):
        value, se = _sharpe(days[column].to_numpy().astype(float), scale, n_eff)
        out[name] = {"value": value, "se": se}
    return out


def verdict(live: dict[str, Any], validation: dict[str, Any]) -> str:
    """One line: too few live dates, or the live RankIC against the validation RankIC."""
    if live["dates"] < MIN_LIVE_DATES:
        return (f"too few live dates to judge ({live['dates']} of the {MIN_LIVE_DATES} "
                "needed): run again as dates are added")
    a, b = live["rank_ic"], validation["rank_ic"]
    diff = a["value"] - b["value"]
    se = math.sqrt(a["se"] ** 2 + b["se"] ** 2)
    text = (f"live RankIC {a['value']:+.4f} ± {a['se']:.4f} over {live['dates']} dates, "
            f"validation {b['value']:+.4f} ± {b['se']:.4f}: difference {diff:+.4f} ± {se:.4f}")
    if diff < -2 * se:
        return (f"WEAKER: {text}, more than 2 SE below validation; the signal no longer "
                "behaves like the validated one (refit with hpo.refit, or rerun the study)")
    return f"in line: {text} (within 2 SE, or above)"


def _fmt(f: dict[str, Any], digits: int = 2, sign: str = "+") -> str:
    if not math.isfinite(f["value"]):
        return "n/a"
    return f"{f['value']:{sign}.{digits}f} ± {f['se']:.{digits}f}"


def table(rows: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    """(label, dates, RankIC, Sharpe, net Sharpe, turnover) text rows."""
    out = [("", "dates", "RankIC", "Sharpe", "net Sharpe", "turnover")]
    for label, f in rows.items():
        out.append((label, str(f["dates"]), _fmt(f["rank_ic"], 4), _fmt(f["sharpe"]),
                    _fmt(f["sharpe_net"]), _fmt(f["turnover"], 3, sign="")))
    return out


def chart(history: pl.DataFrame, labels: dict[str, str]) -> bytes:
    """PNG: cumulative RankIC and compounded net long-short of each series over the history."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6), layout="constrained")
    ax_ic, ax_ret = fig.subplots(2, 1, sharex=True)
    for name, label in labels.items():
        part = history.filter(pl.col("series") == name).sort("date")
        if not part.height:
            continue
        dates = part["date"].to_numpy()
        ax_ic.plot(dates, np.nancumsum(part["rank_ic"].to_numpy()), label=label)
        net = np.nan_to_num(part["long_short_net"].to_numpy().astype(float))
        ax_ret.plot(dates, np.cumprod(1 + net) - 1, label=label)
    ax_ic.set_ylabel("cumulative RankIC")
    ax_ret.set_ylabel("net long-short, compounded")
    ax_ic.legend(loc="upper left", fontsize=8)
    ax_ic.set_title("live: dates after the study's test period")
    buf = io.BytesIO()
    fig.savefig(buf, dpi=90, format="png", metadata={"Software": None})
    return buf.getvalue()


def page(title: str, rows: list[tuple[str, ...]], line: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows[1:])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            "</title><style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px;"
            "text-align:right}td:first-child{text-align:left}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p id='verdict'>{html.escape(line)}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<p><img src='{CHART}' alt='live chart'></p></body></html>")


def monitor(study: optuna.Study, *, source: Path, output: Path, model: str = "chosen"
            ) -> dict[str, Any]:
    """Score the new dates, grow the history, write the files (module docstring); returns the
    summary."""
    from hpo.evaluate import heldout_or_error
    from hpo.predict import model_folder
    from hpo.records import trial_attrs
    from hpo.study import trial_dir
    from trainers.attrs import DATE_SPLIT
    from trainers.context import atomic_write_bytes

    if not Path(source).is_file():
        raise UserError(f"--source {source} does not exist")
    heldout = heldout_or_error(study)
    if not heldout.supports("live"):
        raise UserError("this study's workload cannot score live dates yet")
    number, folder, _ = model_folder(study, output, model, heldout)
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    split = trial_attrs(trial).get(DATE_SPLIT)
    if not split:
        raise UserError(f"trial {number} recorded no date split; rerun the study")
    trained = heldout.load(folder)
    validation_rows = heldout.validation(trial_dir(output, study.study_name, number))
    folder_out = Path(output) / study.study_name / FOLDER
    out = heldout.live(trained, str(source), Path(output) / "cache", split, validation_rows,
                       folder_out)
    history_path = folder_out / HISTORY
    old = pl.read_parquet(history_path) if history_path.is_file() else None
    history, added = merge_history(old, out["series"], model_sha256=heldout.digest(folder),
                                   scored_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    scale = {"periods_per_year": out["periods_per_year"], "horizon": out["horizon"]}
    rows = {out["labels"][name] + (" (live)" if name == "model" else ""):
            figures(history.filter(pl.col("series") == name), **scale)
            for name in out["series"]}
    live_model = rows[f"{out['labels']['model']} (live)"]
    valid = figures(out["validation"], **scale)
    rows["model (validation)"] = valid
    line = verdict(live_model, valid)
    text_rows = table(rows)
    buf = io.BytesIO()
    history.write_parquet(buf)
    atomic_write_bytes(history_path, buf.getvalue(), durable=False)
    atomic_write_bytes(folder_out / CHART, chart(history, out["labels"]), durable=False)
    title = f"{study.study_name}: live since {out['after']} (trial {number})"
    atomic_write_bytes(folder_out / PAGE, page(title, text_rows, line).encode(), durable=False)
    return {"trial": number, "after": out["after"], "added": added, "rows": text_rows,
            "verdict": line, "figures": rows, "cost_bps": out["cost_bps"],
            "folder": str(folder_out)}


def build_parser() -> OneLineParser:
    p = command_parser(
        "monitor",
        "Score the dates after the study's test period whose returns are "
        "realised, beside the baselines, and say whether the live signal still behaves like "
        "the validated one. Example: python -m hpo.monitor --study production --source "
        "panel.parquet")
    add_study_flags(p)
    p.add_argument("--source", required=True, type=Path,
                   help="the study's panel grown with the new dates (parquet or CSV)")
    p.add_argument("--model", default="chosen",
                   help="chosen, trial:N, or refit (the newest hpo.refit) (default: chosen)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hpo.loading import study_for_command

    study = study_for_command(args.study, storage=args.storage, output=args.output)
    summary = monitor(study, source=args.source, output=args.output, model=args.model)
    if args.json:
        print(json.dumps(summary, indent=1))
        return EXIT_OK
    rows = summary["rows"]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"live since {summary['after']} (trial {summary['trial']}, net of "
          f"{summary['cost_bps']:g} bps): {summary['added']} new date(s) scored")
    for r in rows:
        print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    print(summary["verdict"])
    print(f"history, chart and page: {summary['folder']}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
