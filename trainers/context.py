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
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers.errors import UserError
from trainers.progress import DEFAULT_EVERY_S, Phase, ProgressRecord, Reporter

log = logging.getLogger("trainers")

CHECKPOINT_NAME = "checkpoint.pt"
# The previous checkpoint, kept until the next one is on disk with its checksum.
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"
# Beside each checkpoint: its length and BLAKE3 digest, checked before it is loaded.
CHECKSUM_SUFFIX = ".sum"
CHECKPOINT_DAMAGED = "checkpoint_damaged"  # the attr listing damaged checkpoints passed over
HISTORY_NAME = "history.json"


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never half.

    Temp file in the same directory, rename over the target. With ``durable`` (checkpoints,
    caches) the file is fsynced before the rename and the directory after it, so the new file
    also survives a power loss. Without it (files rebuilt from the study storage, such as
    metrics.json, history.json and the results files) a killed process still leaves a whole
    file, and the ~0.35 ms per fsync is saved. A full disk names ``path`` and the bytes (the
    cache's writer, ``cache._io.atomic_write_bytes``, is the one implementation).
    """
    from cache._io import atomic_write_bytes as write

    write(path, data, durable=durable)


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


# Kept free beside a file about to be written: its checksum, the directory entry, the log.
FREE_SPACE_MARGIN = 1 << 20


def check_free_space(path: Path, size: int) -> None:
    """Raise ``DiskFull`` (path, bytes needed, bytes free) when the filesystem of ``path``
    has no room for ``size`` bytes and a margin: checked before a checkpoint is written, so a
    full disk stops the run with a clear line instead of a half-written file."""
    from cache.errors import check_free_space as check
    from trainers.errors import DiskFull

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    check(str(path), size + FREE_SPACE_MARGIN, error=DiskFull)


# Settings that describe the machine rather than the run: a checkpoint may resume elsewhere.
MACHINE_FIELDS = frozenset({"device", "precision", "compile", "min_batch"})


class CheckpointDamaged(Exception):
    """A checkpoint file that does not match its checksum or does not load."""


def _sum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _checksum(data: bytes) -> dict[str, Any]:
    import blake3

    return {"bytes": len(data), "blake3": blake3.blake3(data).hexdigest()}


def resume_point(state: Mapping[str, Any]) -> str:
    """Where a run continues from a checkpoint ``state``, 1-based: ``epoch 2, step 4`` (the
    next epoch and the next step in it; a walk-forward trial names its fold too)."""
    epoch = int(state.get("epoch", 0))
    partial = state.get("partial")
    steps = 0
    if isinstance(partial, Mapping):
        steps = int(partial["steps"]) if "steps" in partial else len(partial.get("losses", ()))
    where = f"epoch {epoch + 1}, step {steps + 1}"
    folds = state.get("walk_forward")
    if isinstance(folds, Mapping) and "fold" in folds:
        where = f"fold {int(folds['fold']) + 1}, {where}"
    return where


def write_with_checksum(path: Path, data: bytes) -> None:
    """Write ``data`` atomically and durably, with its length and BLAKE3 digest beside it in
    ``<path>.sum`` (what :func:`verified_bytes` checks before the file is used)."""
    check_free_space(path, len(data))
    atomic_write_bytes(path, data)
    atomic_write_bytes(_sum_path(path), json.dumps(_checksum(data)).encode())


def verified_bytes(path: Path) -> bytes:
    """The bytes of ``path``, checked against its ``.sum`` when it has one (a file written
    before checksums has none); raises ``CheckpointDamaged`` with the difference."""
    data = Path(path).read_bytes()
    sum_file = _sum_path(Path(path))
    if sum_file.exists():
        try:
            expected = json.loads(sum_file.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointDamaged(f"its checksum file is unreadable: {exc}") from None
        got = _checksum(data)
        if got["bytes"] != expected.get("bytes"):
            raise CheckpointDamaged(f"{got['bytes']} bytes, its checksum says "
                                    f"{expected.get('bytes')}")
        if got["blake3"] != expected.get("blake3"):
            raise CheckpointDamaged("its BLAKE3 digest differs from the one written with it")
    return data


def _load_checked(path: Path) -> dict[str, Any]:
    """Load a checkpoint after checking it against its ``.sum`` (a file written before
    checksums, with no ``.sum``, is only required to load)."""
    import io

    import torch

    data = verified_bytes(path)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any failure to load is damage
        raise CheckpointDamaged(f"it does not load ({str(exc).splitlines()[0][:120]})") from None


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


@dataclass(frozen=True)
class Report:
    """One step a trial reports to its study (``TrialContext.report``)."""

    step: int  # 1-based: the epochs completed, or the folds under walk-forward validation
    figures: Mapping[str, Any]  # the running figures (the objectives among them)
    # The step's own figures where each step is an instance of its own (a walk-forward fold):
    # what pruners that pair steps across trials (Optuna's Wilcoxon) compare.
    instance: Mapping[str, Any] | None = None

    def row(self) -> dict[str, Any]:
        """The history's row (``history.json``, the trial attr ``history``)."""
        row = {"epoch": self.step, **{k: _json_safe(v) for k, v in self.figures.items()}}
        if self.instance is not None:
            row["instance"] = _json_safe(dict(self.instance))
        return row


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
        checkpoint_every_s: float = 0.0,
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
        # Step checkpoints inside an epoch at most this often (0: at epoch ends only), for
        # the recipes that can resume mid-epoch; they bound what a SIGKILL loses.
        self.checkpoint_every_s = float(checkpoint_every_s)
        self._last_checkpoint = time.monotonic()
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
    def report(self, epoch: int, metrics: Mapping[str, Any], *,
               instance: Mapping[str, Any] | None = None) -> Report:
        """Record one step (an epoch, or a fold): its running ``metrics`` and, where the step
        is an instance of its own (a walk-forward fold), that step's own figures
        (``instance``). The history is rewritten atomically each time (not fsynced: the
        durable copy travels in the checkpoint). Returns the typed :class:`Report`."""
        report = Report(step=int(epoch), figures=dict(metrics),
                        instance=dict(instance) if instance is not None else None)
        self.history.append(report.row())
        # one epoch per line (the rows are JSON-safe already)
        text = json_text(self.history, levels=1) + "\n"
        atomic_write_bytes(self.output_dir / HISTORY_NAME, text.encode(), durable=False)
        return report

    # -- stopping ------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Ask the trainer to stop at its next check (called from a signal handler)."""
        self._stop_reason = reason

    def should_stop(self) -> str | None:
        """The reason to stop now, or None. Trainers check this between steps."""
        return self._stop_reason

    def checkpoint_due(self) -> bool:
        """True when ``checkpoint_every_s`` (> 0) has passed since the last checkpoint: a
        recipe that can resume mid-epoch saves a step checkpoint now."""
        return (self.checkpoint_every_s > 0
                and time.monotonic() - self._last_checkpoint >= self.checkpoint_every_s)

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
        data = buf.getvalue()
        path = self.checkpoint_path
        check_free_space(path, len(data))
        if path.exists():  # the last good one stays until this one is on disk, checksummed
            previous = path.with_name(PREVIOUS_CHECKPOINT_NAME)
            os.replace(path, previous)
            if _sum_path(path).exists():
                os.replace(_sum_path(path), _sum_path(previous))
        atomic_write_bytes(path, data)
        atomic_write_bytes(_sum_path(path), json.dumps(_checksum(data)).encode())
        self._last_checkpoint = time.monotonic()

    def restore(self) -> dict[str, Any] | None:
        """The newest good checkpoint to resume from: this run's own, its previous one, else
        its predecessor's (own, then previous). A checkpoint whose length or BLAKE3 digest
        differs from its ``.sum``, or that does not load, is passed over and listed in the
        attr ``checkpoint_damaged``; with none left the run starts from scratch."""
        damaged: list[dict[str, str]] = []
        state = None
        for candidate in self._checkpoint_candidates():
            if not candidate.exists():
                continue
            try:
                state = _load_checked(candidate)
            except CheckpointDamaged as exc:
                damaged.append({"file": str(candidate), "reason": str(exc)})
                continue
            break
        if damaged:
            self.set_attr(CHECKPOINT_DAMAGED, damaged)
            self.log(f"damaged checkpoint(s) passed over: "
                     f"{'; '.join(d['file'] + ' (' + d['reason'] + ')' for d in damaged)}; "
                     + ("resuming from the next good one" if state is not None
                        else "starting from scratch"))
        if state is not None:
            self.history = list(state.get("history", []))
            self.log(self.resume_line(state))
        return state

    def resume_line(self, state: Mapping[str, Any]) -> str:
        """The one line a resumed run logs: where it continues (``resume_point``)."""
        return f"resuming at {resume_point(state)}"

    def _checkpoint_candidates(self) -> list[Path]:
        out = [self.checkpoint_path, self.checkpoint_path.with_name(PREVIOUS_CHECKPOINT_NAME)]
        predecessor = self._predecessor_checkpoint()
        if predecessor is not None:
            out += [predecessor, predecessor.with_name(PREVIOUS_CHECKPOINT_NAME)]
        return out

    def _predecessor_checkpoint(self) -> Path | None:
        if self.resume_dir is None:
            return None
        return self.resume_dir / CHECKPOINT_NAME
