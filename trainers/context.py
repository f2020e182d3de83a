"""TrialContext: everything a trainer sees of the world outside its training loop.

A trainer calls ``ctx.set_attr`` for facts about the run (device, optimizer class, OOM
retries), ``ctx.report`` once per epoch, ``ctx.checkpoint`` after each epoch and
``ctx.restore`` at start-up. Standalone runs (``python -m trainers.<name>``) use this class
as it is; ``hpo.objective`` subclasses it to forward attrs and reports to the Optuna trial.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from trainers.errors import UserError
from trainers.progress import DEFAULT_EVERY_S, Phase, ProgressRecord, Reporter

log = logging.getLogger("trainers")

CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_NAME = "history.json"


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never half.

    Temp file in the same directory, rename over the target. With ``durable`` (checkpoints,
    caches) the file is fsynced before the rename and the directory after it, so the new file
    also survives a power loss. Without it (files rebuilt from the study storage, such as
    metrics.json, history.json and the results files) a killed process still leaves a whole
    file, and the ~0.35 ms per fsync is saved.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except FileNotFoundError:  # the directory is created on first use only
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if not durable:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _json_safe(value: Any) -> Any:
    """Map NaN/inf to None and numpy/torch scalars to Python, so JSON stays standard."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_text(obj: Any, *, levels: int = 2, _depth: int = 0) -> str:
    """JSON with the outer ``levels`` of objects and arrays one item per line, and compact below.

    Readable like ``indent=2`` for the files here (a key per line, a trial or an epoch per
    line), but encoded by json's C encoder: ``indent`` switches to the pure-Python one, ~10x
    slower on a large ``all_trials.json``.
    """
    if _depth < levels and isinstance(obj, dict | list) and obj:
        pad = "  " * (_depth + 1)
        if isinstance(obj, dict):
            items = [f"{pad}{json.dumps(str(k))}: {json_text(v, levels=levels, _depth=_depth + 1)}"
                     for k, v in obj.items()]
            open_, close = "{", "}"
        else:
            items = [pad + json_text(v, levels=levels, _depth=_depth + 1) for v in obj]
            open_, close = "[", "]"
        return open_ + "\n" + ",\n".join(items) + "\n" + "  " * _depth + close
    return json.dumps(obj)


def atomic_write_json(path: Path, obj: Any, *, durable: bool = True) -> None:
    atomic_write_bytes(Path(path), (json_text(_json_safe(obj)) + "\n").encode(),
                       durable=durable)


# Settings that describe the machine rather than the run: a checkpoint may resume elsewhere.
MACHINE_FIELDS = frozenset({"device", "precision", "compile", "min_batch"})


def check_resumable(state: dict[str, Any], config: Any, ctx: TrialContext) -> None:
    """Refuse to continue a checkpoint written with other run settings (``state["config"]``)."""
    from trainers.config import to_mapping

    saved, current = state.get("config", {}), to_mapping(config)
    changed = sorted(k for k in current.keys() - MACHINE_FIELDS if saved.get(k) != current[k])
    if saved and changed:
        raise UserError(
            f"the checkpoint in {ctx.output_dir} was written with other settings "
            f"({', '.join(f'{k}: {saved.get(k)!r} -> {current[k]!r}' for k in changed)}); "
            "resume with the same settings or use a fresh output directory"
        )


class TrialContext:
    """Per-run context handed to ``train(config, ctx)``.

    Args:
        output_dir: the run's own directory (``<output>/<study>/trial_<n>`` under a study).
        trial_number: the Optuna trial number, or None for a standalone run.
        seed: the seed the trainer must use (per trial under a study).
        resume_dir: a directory holding a predecessor's checkpoint to resume from
            (set by the study when this trial retries a crashed one).
        cache_dir: where data caches shared by runs live (the feature cache); default
            ``<output_dir>/cache``. Under a study it is ``<output>/cache`` for every trial.
    """

    def __init__(
        self,
        output_dir: Path | str,
        *,
        trial_number: int | None = None,
        seed: int = 0,
        resume_dir: Path | str | None = None,
        cache_dir: Path | str | None = None,
        progress: bool = True,
        progress_every_s: float = DEFAULT_EVERY_S,
        progress_bars: bool | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.output_dir / "cache"
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.trial_number = trial_number
        self.seed = seed
        self.resume_dir = Path(resume_dir) if resume_dir is not None else None
        self.attrs: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self._stop_reason: str | None = None
        prefix = f"[trial {trial_number}] " if trial_number is not None else ""
        self.reporter = Reporter(prefix=prefix, enabled=progress, every_s=progress_every_s,
                                 bars=progress_bars, on_record=self.on_progress)

    # -- facts about the run -------------------------------------------------------------
    def set_attr(self, key: str, value: Any) -> None:
        """Record a JSON-able fact about the run (stored as a trial user attr under a study)."""
        self.attrs[key] = _json_safe(value)

    def log(self, message: str) -> None:
        prefix = f"[trial {self.trial_number}] " if self.trial_number is not None else ""
        log.info("%s%s", prefix, message)

    # -- progress within a long phase (trainers.progress) ----------------------------------
    def phase(self, name: str, *, total: int, unit: str, epoch: int | None = None,
              epochs: int | None = None) -> Phase:
        """Open a phase of ``total`` ``unit`` (``with ctx.phase(...) as p: p.advance()``)."""
        return self.reporter.phase(name, total=total, unit=unit, epoch=epoch, epochs=epochs)

    def on_progress(self, record: ProgressRecord) -> None:
        """Each progress record shown (at most every ``progress_every_s`` and at each phase's
        end); a study stores it on the trial."""

    # -- per-epoch progress --------------------------------------------------------------
    def report(self, epoch: int, metrics: dict[str, float]) -> None:
        """Record one epoch's metrics; the history is rewritten atomically each time (not
        fsynced: the durable copy travels in the checkpoint)."""
        row = {"epoch": int(epoch), **{k: _json_safe(v) for k, v in metrics.items()}}
        self.history.append(row)
        # one epoch per line (the rows are JSON-safe already)
        text = json_text(self.history, levels=1) + "\n"
        atomic_write_bytes(self.output_dir / HISTORY_NAME, text.encode(), durable=False)

    # -- stopping ------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Ask the trainer to stop at its next check (called from a signal handler)."""
        self._stop_reason = reason

    def should_stop(self) -> str | None:
        """The reason to stop now, or None. Trainers check this between steps."""
        return self._stop_reason

    # -- checkpoints ---------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / CHECKPOINT_NAME

    def checkpoint(self, state: dict[str, Any], *, epoch: int) -> None:
        """Save ``state`` (model, optimizer, scheduler, scaler, RNG...) atomically.

        ``epoch`` is the number of epochs completed; a resumed run starts at that epoch.
        """
        import io

        import torch

        buf = io.BytesIO()
        torch.save({**state, "epoch": int(epoch), "history": self.history}, buf)
        atomic_write_bytes(self.checkpoint_path, buf.getvalue())

    def restore(self) -> dict[str, Any] | None:
        """The newest checkpoint to resume from: this run's own, else its predecessor's."""
        import torch

        for candidate in (self.checkpoint_path, self._predecessor_checkpoint()):
            if candidate is not None and candidate.exists():
                state = torch.load(candidate, map_location="cpu", weights_only=False)
                self.history = list(state.get("history", []))
                return state
        return None

    def _predecessor_checkpoint(self) -> Path | None:
        if self.resume_dir is None:
            return None
        return self.resume_dir / CHECKPOINT_NAME
