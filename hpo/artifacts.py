"""Per-trial artifacts and notes that optuna-dashboard shows next to each trial.

The objective calls :func:`upload_trial_artifacts` once a trial has written its ``metrics.json``:
the metrics file, a learning-curve PNG drawn from the per-epoch ``history`` and the trial's
checkpoint are copied into a :class:`optuna.artifacts.FileSystemArtifactStore` under
``<output>/artifacts`` (the store ``python -m hpo.dashboard`` serves), and the history is also
written as a Markdown table into the trial's dashboard note. Multi-objective studies cannot use
``trial.report``, so this is where their learning curves become visible.

Artifacts are a convenience: a failure here is logged and never fails a finished trial.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, BinaryIO

import optuna

from hpo import attrs
from hpo.records import trial_attrs

log = logging.getLogger("hpo")

ARTIFACTS_DIRNAME = "artifacts"
LEARNING_CURVE_NAME = "learning_curve.png"
# Files of a trial directory that are uploaded when present, in this order.
TRIAL_FILES = ("metrics.json", LEARNING_CURVE_NAME, "checkpoint.pt", "traceback.txt")
# A learning curve (PNG and note table) needs at least this many epochs; a single point is the
# trial's own values, and drawing it costs ~0.1 s of matplotlib per trial.
MIN_CURVE_EPOCHS = 2
# Guessed from the extension otherwise, and ".pt" guesses as a SNES page table.
MIMETYPES = {"checkpoint.pt": "application/octet-stream", "traceback.txt": "text/plain"}
# A note longer than this many epochs shows the first and last rows only: the dashboard keeps
# notes in study system attrs, which every dashboard refresh reads.
NOTE_MAX_ROWS = 40


def artifact_dir(output_dir: Path) -> Path:
    return Path(output_dir) / ARTIFACTS_DIRNAME


class LinkingArtifactStore(optuna.artifacts.FileSystemArtifactStore):
    """Optuna's file-system artifact store that hard-links an uploaded file instead of copying
    it when both live on the same file system.

    A trial's checkpoint can be hundreds of MB: a copy per trial doubled the disk a study needs
    and the time to publish it. Linking is safe here because every file this service uploads
    is replaced by rename (a new inode), never rewritten in place, so a later write to the trial
    directory cannot change an artifact. Across file systems it copies, as Optuna does.
    """

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        source = getattr(content_body, "name", None)
        if isinstance(source, str) and os.path.isfile(source):
            try:
                os.link(source, self._get_filepath(artifact_id))
                return
            except OSError:  # another file system, or links not supported: copy
                pass
        super().write(artifact_id, content_body)


def artifact_store(output_dir: Path, *,
                   create: bool = True) -> optuna.artifacts.FileSystemArtifactStore:
    """The file-system artifact store under ``<output>/artifacts`` (created if missing when
    ``create``; a reader such as the dashboard leaves the disk alone)."""
    path = artifact_dir(output_dir)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return LinkingArtifactStore(base_path=path)


# -- study note -------------------------------------------------------------------------------
def study_note(study: optuna.Study) -> str:
    """Markdown shown on the study's dashboard page: description, workload, objectives."""
    user_attrs = study.user_attrs
    names = study.metric_names or [f"value_{i}" for i in range(len(study.directions))]
    lines = [f"## {study.study_name}", ""]
    if user_attrs.get(attrs.DESCRIPTION):
        lines += [str(user_attrs[attrs.DESCRIPTION]), ""]
    if user_attrs.get(attrs.WORKLOAD):
        lines.append(f"- workload: `{user_attrs[attrs.WORKLOAD]}`")
    objectives = ", ".join(f"{n} ({d.name.lower()})"
                           for n, d in zip(names, study.directions, strict=False))
    lines.append(f"- objectives: {objectives}")
    if user_attrs.get(attrs.TARGET) is not None:
        lines.append(f"- target: {user_attrs[attrs.TARGET]} finished trials")
    from hpo.heldout import read_summary, render_markdown

    summary = read_summary(study)
    if summary is not None:  # written by hpo.evaluate once the test period was opened
        lines += ["", render_markdown(summary).rstrip("\n")]
    return "\n".join(lines) + "\n"


def has_study_note(study: optuna.Study) -> bool:
    from optuna_dashboard import get_note

    return bool(get_note(study).strip())


def save_study_note(study: optuna.Study) -> None:
    """Write :func:`study_note` as the study's dashboard note."""
    from optuna_dashboard import save_note

    save_note(study, study_note(study))


# -- learning curves --------------------------------------------------------------------------
def history_metrics(history: list[dict[str, Any]]) -> list[str]:
    """Metric names present in a per-epoch history, in first-seen order."""
    names: list[str] = []
    for row in history:
        for key in row:
            if key != "epoch" and key not in names:
                names.append(key)
    return names


def learning_curve_png(history: list[dict[str, Any]], path: Path, *, title: str,
                       first: list[str] | None = None) -> Path | None:
    """Draw one panel per metric (``first`` ones on top) against the epoch; None if no data.

    Uses a bare matplotlib ``Figure`` (Agg canvas): no pyplot state, no display needed.
    """
    from matplotlib.figure import Figure

    names = history_metrics(history)
    names = [n for n in (first or []) if n in names] + [n for n in names
                                                        if n not in (first or [])]
    series = []
    for name in names:
        points = [(row["epoch"], row[name]) for row in history
                  if isinstance(row.get(name), int | float) and "epoch" in row]
        if points:
            series.append((name, points))
    if not series:
        return None
    fig = Figure(figsize=(6.0, 1.0 + 1.8 * len(series)), layout="constrained")
    axes = fig.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, points) in zip(axes, series, strict=True):
        epochs, values = zip(*points, strict=True)
        ax.plot(epochs, values, marker="o", markersize=3)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("epoch")
    fig.suptitle(title)
    import io

    from trainers.context import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, dpi=90, format="png")
    # replaced by rename, never rewritten in place: the artifact store may hold a hard link
    atomic_write_bytes(Path(path), buf.getvalue(), durable=False)
    return Path(path)


def history_markdown(history: list[dict[str, Any]], *, max_rows: int = NOTE_MAX_ROWS) -> str:
    """The per-epoch history as a Markdown table (middle rows elided beyond ``max_rows``)."""
    names = history_metrics(history)
    if not history or not names:
        return ""
    rows = history
    if len(rows) > max_rows:
        half = max_rows // 2
        rows = [*rows[:half], {}, *rows[-half:]]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.5g}"
        return "..." if v is None else str(v)

    lines = ["| epoch | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(k)) for k in ("epoch", *names)) + " |")
    return "\n".join(lines) + "\n"


# -- upload -----------------------------------------------------------------------------------
def upload_trial_artifacts(trial: optuna.Trial, *, trial_dir: Path, output_dir: Path,
                           metric_names: list[str] | None = None,
                           store: optuna.artifacts.FileSystemArtifactStore | None = None,
                           ) -> list[str]:
    """Upload the trial's files and save its learning-curve note; returns the artifact ids.

    ``store``: the store of ``output_dir`` when the caller keeps one open. Never raises: a
    broken plot or a full disk must not turn a finished trial into a failure.
    """
    try:
        return _upload(trial, Path(trial_dir), store or artifact_store(Path(output_dir)),
                       list(metric_names or []))
    except Exception as exc:  # see the docstring: artifacts are best effort
        log.warning("trial %d: could not upload artifacts: %s: %s", trial.number,
                    type(exc).__name__, exc)
        return []


def _upload(trial: optuna.Trial, trial_dir: Path,
            store: optuna.artifacts.FileSystemArtifactStore, metric_names: list[str]) -> list[str]:
    history = list(trial_attrs(trial).get(attrs.HISTORY) or [])
    if len(history) < MIN_CURVE_EPOCHS:
        history = []
    if history:
        learning_curve_png(history, trial_dir / LEARNING_CURVE_NAME,
                           title=f"{trial.study.study_name} trial {trial.number}",
                           first=metric_names)
    ids = []
    for name in TRIAL_FILES:
        path = trial_dir / name
        if path.is_file():
            ids.append(optuna.artifacts.upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=trial,
                mimetype=MIMETYPES.get(name)))
    table = history_markdown(history)
    if table:
        from optuna_dashboard import save_note

        save_note(trial, f"### Learning curve (trial {trial.number})\n\n{table}")
    return ids
