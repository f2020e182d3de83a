"""Study plots for ``hpo.export``: interactive HTML (plotly) and static PNG (matplotlib).

Every HTML file embeds plotly.js, so it opens offline and fetches nothing from a CDN; PNGs come
from ``optuna.visualization.matplotlib`` on the Agg backend, so no browser (kaleido) is needed.
A plot the study cannot support yet (too few complete trials, one parameter, more than three
objectives for a Pareto front) is skipped with a note that says why.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from cache.errors import writing
from hpo.results import metric_names

# Importances and parallel coordinates compare trials against each other and parameters
# against each other: with fewer than two of either there is nothing to compare.
MIN_TRIALS_TO_COMPARE = 2
MIN_PARAMS_TO_COMPARE = 2
# Optuna draws Pareto fronts in 2-D or 3-D only.
PARETO_MAX_OBJECTIVES = 3


@dataclass(frozen=True)
class Plot:
    stem: str
    html: Callable[[], Any]   # -> plotly Figure
    png: Callable[[], Any]    # -> matplotlib Axes (or an array of them)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _target(i: int, *, sign: float = 1.0) -> Callable[[FrozenTrial], float]:
    return lambda t: sign * t.values[i]


def plan(study: optuna.Study) -> tuple[list[Plot], list[str]]:
    """The plots this study supports now, and one note per plot it cannot have yet."""
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl

    names = metric_names(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    params = list(dict.fromkeys(p for t in complete for p in t.params))
    plots: list[Plot] = []
    notes: list[str] = []
    if not complete:
        return [], ["all plots skipped: the study has no complete trial yet"]

    if len(names) > 1:
        if len(names) <= PARETO_MAX_OBJECTIVES:
            plots.append(Plot("pareto_front", lambda: vis.plot_pareto_front(study),
                              lambda: vis_mpl.plot_pareto_front(study)))
        else:
            notes.append(f"pareto_front skipped: Optuna draws 2 or 3 objectives, the study has "
                         f"{len(names)}; see best_params.json for the front")
    for i, name in enumerate(names):
        kw = {"target": _target(i), "target_name": name} if len(names) > 1 else {}
        plots.append(Plot(f"history_{_safe(name)}",
                          lambda kw=kw: vis.plot_optimization_history(study, **kw),
                          lambda kw=kw: vis_mpl.plot_optimization_history(study, **kw)))

    why = []
    if len(complete) < MIN_TRIALS_TO_COMPARE:
        why.append(f"needs >= {MIN_TRIALS_TO_COMPARE} complete trials, the study has "
                   f"{len(complete)}")
    if len(params) < MIN_PARAMS_TO_COMPARE:
        why.append(f"needs >= {MIN_PARAMS_TO_COMPARE} parameters, the study has {len(params)}")
    if why:
        notes.append(f"importances and parallel_coordinate skipped: {'; '.join(why)}")
        return plots, notes
    for i, name in enumerate(names):
        kw = {"target": _target(i), "target_name": name} if len(names) > 1 else {}
        # The default importance evaluator ranks parameters by how they reach *low* target
        # values: a maximised objective is negated (one objective: Optuna does it itself).
        imp = dict(kw)
        if len(names) > 1 and study.directions[i] == optuna.study.StudyDirection.MAXIMIZE:
            imp["target"] = _target(i, sign=-1.0)
        plots.append(Plot(f"importances_{_safe(name)}",
                          lambda imp=imp: vis.plot_param_importances(study, **imp),
                          lambda imp=imp: vis_mpl.plot_param_importances(study, **imp)))
        plots.append(Plot(f"parallel_coordinate_{_safe(name)}",
                          lambda kw=kw: vis.plot_parallel_coordinate(study, **kw),
                          lambda kw=kw: vis_mpl.plot_parallel_coordinate(study, **kw)))
    return plots, notes


def _save_png(axes: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    first = axes.flat[0] if hasattr(axes, "flat") else axes
    fig = first.figure
    try:
        fig.savefig(path, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)


def write_plots(study: optuna.Study, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Write every supported plot as ``<stem>.html`` and ``<stem>.png`` under ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window (and no display on a server)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots, notes = plan(study)
    written: list[Path] = []
    with warnings.catch_warnings():
        # optuna.visualization.matplotlib is marked experimental; the warning is noise here.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Maximised objectives are negated above; the evaluator's reminder is handled.
        warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
        # A parameter that never varied gets a flat axis; matplotlib widens it by itself.
        warnings.filterwarnings("ignore", message="Attempting to set identical low and high")
        for plot in plots:
            html, png = out_dir / f"{plot.stem}.html", out_dir / f"{plot.stem}.png"
            try:
                with writing(html):
                    plot.html().write_html(html, include_plotlyjs=True, full_html=True,
                                           include_mathjax=False)
                with writing(png):
                    _save_png(plot.png(), png)
            except (ValueError, RuntimeError) as exc:
                # e.g. importances of parameters that never varied: note it, keep exporting.
                html.unlink(missing_ok=True)
                notes.append(f"{plot.stem} skipped: {exc}")
                continue
            written += [html, png]
    return written, notes
