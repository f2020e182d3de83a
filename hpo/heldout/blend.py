"""The chosen model blended with ridge: the signal a quant would trade if the tuned model
complements the simple alternative rather than replaces it.

The blend's score of a row is the mean of the chosen model's and ridge's per-date standardised
scores (``trainers.heldout.ensemble_scores``), with **equal weights fixed in advance**: no
weight is fitted on validation or test, so the blend adds no selection of its own and its test
figure is as honest as the chosen trial's. It goes through the study's book and costs like
every other row. Reported on validation (where the chosen trial was selected, so flattered like
the trial's own figure) and on test, with the paired differences against ridge and against the
chosen model alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainers.heldout import HeldOut, ensemble_scores

BLENDED_BASELINE = "linear"  # ridge on every feature (trainers.baselines)
PERIODS = ("validation", "test")
SUMMARY_METRICS = ("sharpe", "sharpe_net", "rank_ic", "turnover")


def blend_with_baseline(heldout: HeldOut, model: Any, chosen: Mapping[str, Any],
                        baselines: Mapping[str, Any] | None,
                        baseline_frames: Mapping[str, Any] | None,
                        name: str = BLENDED_BASELINE) -> dict[str, Any] | None:
    """The report's ``blend`` entry (module docstring), its test rows under ``_frame``; None
    when the workload gave no rows of the baseline ``name`` for both periods or cannot compare
    two sets of rows."""
    frames = {p: (baseline_frames or {}).get(p, {}).get(name) for p in PERIODS}
    if any(f is None for f in frames.values()) or not heldout.supports("compare"):
        return None
    label = (baselines or {}).get("test", {}).get(name, {}).get("label", name)
    out: dict[str, Any] = {"with": label, "weights": {"chosen": 0.5, label: 0.5},
                           "minus_baseline": {}}
    for period in PERIODS:
        blend = ensemble_scores([chosen[period], frames[period]])
        out[period] = heldout.score(blend, model)[0]
        out["minus_baseline"][period] = heldout.compare(blend, frames[period], model)
        if period == "test":
            out["minus_chosen"] = {"test": heldout.compare(blend, chosen[period], model)}
            out["_frame"] = blend  # for the tear sheet; not written to the report
    return out


def blend_summary(blend: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The short form: the blend's test figures and its paired leads on test."""
    if not blend:
        return None

    def pick(figures: Mapping[str, Any]) -> dict[str, Any]:
        return {k: {"value": figures[k]["value"], "se": figures[k]["se"]}
                for k in SUMMARY_METRICS if k in figures}

    return {"with": blend["with"], "test": pick(blend["test"]),
            "minus_baseline": pick(blend["minus_baseline"]["test"]),
            "minus_chosen": pick(blend["minus_chosen"]["test"])}
