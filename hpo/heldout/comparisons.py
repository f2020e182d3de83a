"""The chosen trial beside its baselines: the report's baseline rows and the paired
differences "chosen minus baseline" (``HeldOut.compare``), on validation and test."""

from __future__ import annotations

from typing import Any

from hpo.heldout.luck import finite_number
from trainers.heldout import HeldOut


def _period_figures(metrics: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """A baseline's figures as ``{name: {"value", "se"}}``: plain numbers get no SE."""
    out = {}
    for name in names:
        v = metrics.get(name)
        if isinstance(v, dict) and "value" in v:
            out[name] = {"value": v["value"], "se": v.get("se")}
        elif isinstance(v, int | float):
            out[name] = {"value": v, "se": None}
    return out


def baseline_rows(baselines: dict[str, Any] | None,
                   names: tuple[str, ...]) -> dict[str, Any]:
    """One table row per baseline present in both periods, named by its ``label``."""
    if not baselines:
        return {}
    rows: dict[str, Any] = {}
    val, test = baselines.get("validation") or {}, baselines.get("test") or {}
    for name, on_test in test.items():
        on_val = val.get(name)
        if on_test is None or on_val is None:
            continue
        rows[str(on_test.get("label", name))] = {"validation": _period_figures(on_val, names),
                                                "test": _period_figures(on_test, names)}
    return rows


def versus_baselines(heldout: HeldOut, model: Any, baselines: dict[str, Any] | None,
                     frames: dict[str, Any] | None,
                     chosen: dict[str, Any]) -> dict[str, Any] | None:
    """The chosen trial minus each baseline that came with prediction rows, on validation and
    on test, with paired standard errors (``HeldOut.compare``); None without baselines or a
    comparison."""
    if not baselines or not frames or not heldout.supports("compare"):
        return None
    out = {}
    for name, on_val in (frames.get("validation") or {}).items():
        on_test = (frames.get("test") or {}).get(name)
        if on_test is None:
            continue
        label = ((baselines.get("test") or {}).get(name) or {}).get("label", name)
        out[name] = {"label": str(label),
                     "validation": heldout.compare(chosen["validation"], on_val, model),
                     "test": heldout.compare(chosen["test"], on_test, model)}
    return out or None


def best_of(versus: dict[str, Any] | None, baselines: dict[str, Any] | None, *, metric: str,
            direction: str = "maximize") -> dict[str, Any] | None:
    """The comparison with the best baseline: the one with the best *validation* ``metric``
    (the figure that picks the chosen trial; the first listed on a tie). Like the trials,
    baselines are chosen without looking at the test period."""
    if not versus or not baselines:
        return None
    on_val = baselines.get("validation") or {}
    candidates = []
    for name in versus:
        figure = (on_val.get(name) or {}).get(metric)
        value = figure.get("value") if isinstance(figure, dict) else figure
        if finite_number(value):
            candidates.append((float(value), name))
    if not candidates:
        return None
    sign = 1.0 if direction == "maximize" else -1.0
    best = max(candidates, key=lambda c: sign * c[0])[1]
    return {"baseline": best, "chosen_by": f"the best validation {metric} among the baselines",
            **versus[best]}


def versus_row(versus: dict[str, Any] | None,
                names: tuple[str, ...]) -> dict[str, Any] | None:
    """The summary's "chosen minus best baseline" row."""
    if not versus:
        return None
    return {"label": f"chosen - {versus['label']}",
            "validation": _period_figures(versus["validation"], names),
            "test": _period_figures(versus["test"], names)}
