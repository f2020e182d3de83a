"""The held-out test report as the other commands show it: names, the summary attr, tables.

``hpo.evaluate`` writes ``<output>/<study>/test_report.json`` and puts a short summary of it in
the study user attr ``test_report`` (never in a trial's values or attrs, which samplers and
pruners read). ``hpo.run``, ``hpo.status``, ``hpo.export`` and the dashboard's study note show
that summary as one table: validation and test side by side, each column labelled.
This module is light (no torch): the status and export commands import it.
"""

from __future__ import annotations

import math
from typing import Any

import optuna

from hpo import attrs

REPORT_FILE = "test_report.json"
PREDICTIONS_FILE = "test_predictions.parquet"
SUMMARY_ATTR = attrs.TEST_REPORT
# Bumped whenever a reported figure is computed differently: part of the report's identity,
# so a changed computation gives a fresh report instead of an old file left in place.
METRICS_VERSION = 3
# The figures of each period shown in the tables, in order, when a summary names none (the
# workload's held-out capability names them: ``HeldOut.table``).
TABLE_METRICS = ("sharpe", "rank_ic", "ic", "icir")


def read_summary(study: optuna.Study) -> dict[str, Any] | None:
    """The study's test-report summary, or None when the test period was never opened."""
    from hpo.records import record

    summary = record(study, SUMMARY_ATTR)
    return summary if isinstance(summary, dict) and "trials" in summary else None


def _cell(figure: dict[str, Any] | None) -> str:
    """``value ± se`` (or just the value when there is no standard error)."""
    if not figure:
        return "-"
    value, se = figure.get("value"), figure.get("se")
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    text = f"{value:.3g}"
    if isinstance(se, int | float) and math.isfinite(se):
        text += f"±{se:.2g}"
    return text


def table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per evaluated trial (the chosen one marked ``*``), then the
    baselines; for each of the summary's ``metrics`` (default ``TABLE_METRICS``) a validation
    and a test column."""
    metrics = tuple(summary.get("metrics") or TABLE_METRICS)
    header = ["trial"]
    for name in metrics:
        header += [f"validation {name}", f"test {name}"]
    rows = []
    for trial in summary.get("trials", []):
        row = [f"{trial['number']}{' *' if trial.get('chosen') else ''}"]
        for name in metrics:
            row += [_cell(trial["validation"].get(name)), _cell(trial["test"].get(name))]
        rows.append(row)
    for label, base in (summary.get("baselines") or {}).items():
        row = [label]
        for name in metrics:
            row += [_cell(base["validation"].get(name)), _cell(base["test"].get(name))]
        rows.append(row)
    versus = summary.get("versus_baseline")
    if versus:
        row = [versus["label"]]
        for name in metrics:
            row += [_cell(versus["validation"].get(name)), _cell(versus["test"].get(name))]
        rows.append(row)
    return header, rows


# Figures the verdict on the chosen trial against its best baseline is read on (higher is
# better for each), and how many standard errors a difference must reach to count.
VERDICT_METRICS = ("sharpe", "sharpe_net", "rank_ic")
VERDICT_SES = 2.0


def verdict(summary: dict[str, Any]) -> str | None:
    """One line: does the chosen trial beat its best baseline on test? A paired difference
    under ``VERDICT_SES`` standard errors is "no difference"."""
    versus = summary.get("versus_baseline")
    if not versus:
        return None
    label = versus["label"].removeprefix("chosen - ")
    parts = []
    for name in VERDICT_METRICS:
        figure = versus["test"].get(name) or {}
        value, se = figure.get("value"), figure.get("se")
        if not (isinstance(value, int | float) and math.isfinite(value)):
            continue
        if not (isinstance(se, int | float) and math.isfinite(se) and se > 0):
            parts.append(f"{name} {value:+.3g} (no standard error)")
        elif value >= VERDICT_SES * se:
            parts.append(f"{name} better by {value:.3g}±{se:.2g}")
        elif value <= -VERDICT_SES * se:
            parts.append(f"{name} worse by {-value:.3g}±{se:.2g}")
        else:
            parts.append(f"{name} no difference ({value:+.3g}±{se:.2g}, under "
                         f"{VERDICT_SES:g} SE)")
    if not parts:
        return None
    return (f"on test, trial {summary.get('chosen')} against {label} (the best baseline on "
            f"validation): " + "; ".join(parts))


def cost_lines(costs: dict[str, Any] | None) -> list[str]:
    """Net Sharpe on test at each cost of the study's list, with the break-even cost."""
    if not costs or len(costs.get("grid_bps") or ()) < 2:
        return []
    grid = costs["grid_bps"]
    out = [f"net Sharpe on test at {' / '.join(f'{c:g}' for c in grid)} bps per unit traded:"]
    for label, row in costs.get("rows", {}).items():
        values = " / ".join(f"{v:.2f}" if isinstance(v, int | float) and math.isfinite(v)
                            else "-" for v in row["sharpe_net"].values())
        even = row.get("break_even_bps")
        even_text = ("never trades" if even is None else
                     "loses before costs" if even == 0 else f"break-even {even:.1f} bps")
        out.append(f"  {label}: {values} ({even_text})")
    return out


def seeds_lines(ensemble: dict[str, Any] | None) -> list[str]:
    """The seeds ensemble's test figures beside the single model, one line."""
    if not ensemble:
        return []
    if ensemble.get("reason"):
        return [f"seeds ensemble ({ensemble['n_seeds']} seeds): not built: {ensemble['reason']}"]

    def fmt(f: Any) -> str:
        if not isinstance(f, dict) or not isinstance(f.get("value"), int | float):
            return "-"
        se = f.get("se")
        return f"{f['value']:+.3g}" + (f"±{se:.2g}" if isinstance(se, int | float) else "")

    test = ensemble.get("test") or {}
    diff = ensemble.get("minus_single") or {}
    return [f"seeds ensemble of trial {ensemble.get('trial')} ({ensemble['n_seeds']} seeds) on "
            "test: " + ", ".join(f"{k} {fmt(test.get(k))}" for k in test)
            + "; minus the single model (paired): "
            + ", ".join(f"{k} {fmt(diff.get(k))}" for k in diff)]


WORDS, TURNOVER_WORDS = ("better", "worse"), ("more", "less")


def _signed(figure: Any, *, words: tuple[str, str] = WORDS) -> str:
    """``+0.41±0.35 (no difference)``: a paired difference and what ``VERDICT_SES`` SEs say."""
    if not isinstance(figure, dict) or not isinstance(figure.get("value"), int | float):
        return "-"
    value, se = figure["value"], figure.get("se")
    if not (isinstance(se, int | float) and math.isfinite(se) and se > 0):
        return f"{value:+.3g}"
    word = (words[0] if value >= VERDICT_SES * se else
            words[1] if value <= -VERDICT_SES * se else "no difference")
    return f"{value:+.3g}±{se:.2g} ({word})"


def blend_lines(blend: dict[str, Any] | None) -> list[str]:
    """The chosen model blended with ridge (``hpo.heldout.blend``) on test, and its paired
    leads over ridge and over the chosen model alone."""
    if not blend:
        return []
    test = blend.get("test") or {}

    def leads(diff: dict[str, Any]) -> str:
        return ", ".join(f"{k} {_signed(f, words=TURNOVER_WORDS if k == 'turnover' else WORDS)}"
                         for k, f in diff.items())

    head = ", ".join(f"{k} {f['value']:+.3g}±{f['se']:.2g}" if isinstance(f.get("se"), float)
                     else f"{k} {f['value']:+.3g}" for k, f in test.items()
                     if isinstance(f.get("value"), int | float))
    return [f"chosen + {blend['with']}, equal weights of per-date z-scores, on test: {head}",
            f"  minus {blend['with']} (paired): {leads(blend.get('minus_baseline') or {})}",
            f"  minus the chosen model alone (paired): {leads(blend.get('minus_chosen') or {})}"]


def footnotes(summary: dict[str, Any]) -> list[str]:
    """What the table's marks and figures mean, one line each."""
    dsr = summary.get("deflated_sharpe") or {}
    lines = [f"* chosen: {summary.get('rule', '?')}"]
    value = dsr.get("value")
    if isinstance(value, int | float) and math.isfinite(value):
        of = str(dsr.get("of") or "the chosen trial's validation Sharpe").removeprefix(
            "the chosen trial's ")
        line = (f"deflated Sharpe ratio of trial {summary.get('chosen')}'s {of}, "
                f"{dsr.get('n_trials')} trials searched: ")
        verdict_ = str(dsr.get("verdict") or "judged")
        if verdict_ != "judged":
            line += verdict_
        else:
            line += f"{value:.3f}"
            interval = dsr.get("interval")
            if interval:
                line += f" (bootstrap 5-95 %: {interval[0]:.2f} to {interval[1]:.2f})"
        lines.append(line)
    lines += cost_lines(summary.get("costs"))
    lines += seeds_lines(summary.get("seeds_ensemble"))
    lines += blend_lines(summary.get("blend"))
    pbo = summary.get("pbo") or {}
    if isinstance(pbo.get("value"), int | float) or pbo.get("verdict"):
        left = pbo.get("left_out") or []
        head = (f"probability of backtest overfitting (CSCV, {pbo.get('blocks')} blocks of "
                f"{pbo.get('dates', '?')} validation dates, {len(pbo.get('trials') or [])} "
                "complete trials"
                + (f"; left out, scored on fewer dates: trial(s) "
                   f"{', '.join(str(n) for n in left)}" if left else "") + "): ")
        verdict_ = str(pbo.get("verdict") or "judged")
        if verdict_ != "judged" or not isinstance(pbo.get("value"), int | float):
            lines.append(head + verdict_)
        else:
            null = pbo.get("null_interval")
            lines.append(head + f"{pbo['value']:.2f} (0.5 = the pick is luck; near 0 = it "
                         "holds up" + (f"; pure noise at this size gives {null[0]:.2f} to "
                                       f"{null[1]:.2f}, 90 % of the time" if null else "")
                         + ")")
    line = verdict(summary)
    if line:
        lines.append(line)
    opened = summary.get("test_openings")
    if isinstance(opened, int) and opened >= 1:
        lines.append(f"test period opened {opened} time(s), first at "
                     f"{summary.get('first_opened')}")
        if opened > 1:
            lines.append(f"warning: the test period has been looked at {opened} times; a "
                         "choice made after a look makes its figures validation, not "
                         "out-of-sample")
    if summary.get("versus_baseline"):
        lines.append("chosen - baseline: paired differences, both resampled on the same "
                     "bootstrap dates")
    cost = summary.get("cost_bps")
    if isinstance(cost, int | float) and "sharpe_net" in (summary.get("metrics") or ()):
        lines.append(f"sharpe_net: the long-short net of {cost:g} bps per unit traded; "
                     "turnover: weight traded per rebalance (0 to 4)")
    if summary.get("validation_scheme"):
        lines.append(f"validation: {summary['validation_scheme']}")
    lines.append(f"±: standard errors, {summary.get('standard_errors', '?')}")
    return lines


def render_lines(summary: dict[str, Any], *, indent: str = "  ") -> list[str]:
    """The side-by-side table as text lines, with its footnotes."""
    header, rows = table_rows(summary)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = [f"held-out test period {summary.get('test_dates', '?')} "
             f"(validation {summary.get('validation_dates', '?')}):"]
    lines += [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in [header, *rows]]
    lines += [indent + line for line in footnotes(summary)]
    return lines


def render_markdown(summary: dict[str, Any]) -> str:
    """The same table in Markdown, for the dashboard's study note."""
    header, rows = table_rows(summary)
    lines = ["### Held-out test period", "",
             f"test {summary.get('test_dates', '?')}, validation "
             f"{summary.get('validation_dates', '?')}; report `{REPORT_FILE}`", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [""] + [f"- {line}" for line in footnotes(summary)]
    return "\n".join(lines) + "\n"


def current_summary(study: optuna.Study) -> tuple[dict[str, Any] | None, bool]:
    """The summary and whether it still describes the study's best trial / Pareto front
    (False once later trials changed the front: the report is then out of date)."""
    from hpo.results import best_trials

    summary = read_summary(study)
    if summary is None:
        return None, False
    front = [t.number for t in best_trials(study)]
    return summary, [t["number"] for t in summary.get("trials", [])] == front


def stale_line(summary: dict[str, Any], command: str) -> str:
    """The note that the test report describes an older front, with the command that works
    as printed: the test period was opened already, so a new front is a new look
    (``--reopen``, recorded in the study's test_openings)."""
    evaluated = ", ".join(str(t["number"]) for t in summary.get("trials", []))
    return (f"held-out test report: out of date (made for trial(s) {evaluated}; the front "
            f"changed since); looking at the test period again for the new front is recorded "
            f"as another opening: {command} --reopen")


def describe(study: optuna.Study, *, indent: str = "  ", command: str | None = None
             ) -> list[str]:
    """Lines for the terminal: the side-by-side table, or a note that the test report is
    missing or out of date (never a table for a front it was not computed on). ``command``:
    the ``hpo.evaluate`` command for this study's storage and output, as the caller ran it."""
    summary, current = current_summary(study)
    if summary is None:
        return []
    if not current:
        return [stale_line(summary, command or
                           f"python -m hpo.evaluate --study {study.study_name}")]
    return render_lines(summary, indent=indent)

