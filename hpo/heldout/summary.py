"""The short form of a held-out report stored as the study user attr ``test_report`` (what
the status tables, the dashboard note and the console show; ``hpo.heldout`` renders it)."""

from __future__ import annotations

from typing import Any

import optuna

from hpo.heldout import REPORT_FILE, SUMMARY_ATTR, TABLE_METRICS
from hpo.heldout.blend import blend_summary
from hpo.heldout.comparisons import baseline_rows, versus_row


def _cost_summary(costs: dict[str, Any] | None, chosen: int) -> dict[str, Any] | None:
    """Test net Sharpe at each cost and the break-even cost, chosen trial and baselines."""
    if not costs:
        return None
    rows = {f"trial {chosen}": costs["chosen"]["test"], **costs.get("baselines_test", {})}
    first = next(iter(rows.values()))
    return {"grid_bps": first["grid_bps"],
            "rows": {label: {"sharpe_net": {c: v["value"] for c, v in r["sharpe_net"].items()},
                             "break_even_bps": r["break_even_bps"]}
                     for label, r in rows.items()}}


def _seeds_summary(ensemble: dict[str, Any] | None) -> dict[str, Any] | None:
    """The seeds ensemble's test Sharpe, net Sharpe and RankIC and its lead over the single
    model (paired), or the reason it was not built."""
    if not ensemble:
        return None
    if "reason" in ensemble:
        return {"n_seeds": ensemble["n_seeds"], "reason": ensemble["reason"]}
    keys = ("sharpe", "sharpe_net", "rank_ic")
    diff = ensemble.get("ensemble_minus_single") or {}
    return {"n_seeds": ensemble["n_seeds"], "trial": ensemble["trial"],
            "test": {k: ensemble["test"][k] for k in keys if k in ensemble["test"]},
            "minus_single": {k: diff[k] for k in keys if k in diff}}


def summary_of(report: dict[str, Any]) -> dict[str, Any]:
    """The short form stored as the study user attr ``test_report`` (what the tables show)."""
    table = tuple(report.get("table_metrics") or TABLE_METRICS)

    def figures(period: dict[str, Any]) -> dict[str, Any]:
        return {k: {"value": period[k]["value"], "se": period[k]["se"]}
                for k in table if k in period}

    dsr, psr = report.get("deflated_sharpe"), report.get("test_psr")
    return {
        "report_id": report["report_id"], "file": REPORT_FILE,
        "validation_dates": report["validation_dates"], "test_dates": report["test_dates"],
        "chosen": report["chosen"], "rule": report["rule"],
        "standard_errors": report["standard_errors"],
        "cost_bps": report.get("cost_bps"),
        "validation_scheme": report.get("validation_scheme"),
        "metrics": list(table),
        "trials": [{"number": t["number"], "chosen": t["chosen"],
                    "validation": figures(t["validation"]), "test": figures(t["test"])}
                   for t in report["trials"]],
        "baselines": baseline_rows(report.get("baselines"), table),
        "versus_baseline": versus_row(report.get("versus_baseline"), table),
        "costs": _cost_summary(report.get("costs"), report["chosen"]),
        "seeds_ensemble": _seeds_summary(report.get("seeds_ensemble")),
        "blend": blend_summary(report.get("blend")),
        "deflated_sharpe": ({k: dsr[k] for k in ("value", "n_trials", "of", "verdict",
                                                  "interval") if k in dsr}
                            if dsr else None),
        "pbo": ({k: pbo.get(k) for k in ("value", "blocks", "trials", "reason", "verdict",
                                          "null_interval", "left_out", "dates")}
                if (pbo := report.get("pbo")) else None),
        "test_openings": len(report.get("test_openings") or []),
        "first_opened": (report.get("test_openings") or [{}])[0].get("time"),
        "test_psr": psr["value"] if psr else None,
    }


def short_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The one-line form kept as the study user attr (``optuna studies`` prints it): the
    report, the chosen trial and its headline test figures."""
    chosen = next((t for t in summary.get("trials", []) if t.get("chosen")), None) or {}
    test = {k: round(v["value"], 4) for k, v in (chosen.get("test") or {}).items()
            if isinstance(v, dict) and isinstance(v.get("value"), int | float)}
    return {"file": summary.get("file"), "report_id": str(summary.get("report_id"))[:12],
            "chosen": summary.get("chosen"), "test_dates": summary.get("test_dates"),
            "test": test}


def publish_summary(study: optuna.Study, report: dict[str, Any]) -> None:
    """The summary as the study user attr and in the study's dashboard note."""
    from hpo.artifacts import save_study_note
    from hpo.records import set_record

    summary = summary_of(report)
    set_record(study, SUMMARY_ATTR, summary)  # what the tables render
    study.set_user_attr(SUMMARY_ATTR, short_summary(summary))
    save_study_note(study)
