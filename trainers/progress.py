"""Where a long phase of a trial is: done/total units, rate and ETA, shown as it goes.

A trainer opens a phase with ``ctx.phase("train", total=steps, unit="steps", epoch=3,
epochs=10)`` and calls ``advance(n)`` as units finish; ``close()`` (or leaving the ``with``
block) ends it. Phases of the ATFT-GAT recipe: ``graph`` (dates), ``train`` (steps) and
``validate`` (dates); the feature cache is built before (its own log lines say so).

What the user sees, chosen by :class:`Reporter`:

* on a terminal, one updating ``tqdm`` bar per phase (tqdm comes with Optuna already, so it
  costs no dependency; ``rich`` would draw nicer bars but adds one and owns the terminal,
  which fights with the logging lines the service prints between bars);
* in logs and pipes, a plain line at most every ``every_s`` seconds (default 30) and one when
  the phase ends, each carrying the trial number, so the lines of several workers never mix
  into each other.

Every record (:class:`ProgressRecord`) also goes to ``on_record``: under a study the running
trial stores its latest one as the trial user attr ``progress`` at most every ``every_s``
seconds (never per step), which ``hpo.status`` shows for a trial running in another process.

Cost: ``advance`` is a counter and a clock read; measured in ``scripts/bench_epoch.py``
beside the step time.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("trainers")

DEFAULT_EVERY_S = 30.0


def clock_text(seconds: float | None) -> str:
    """``1:08`` / ``1:02:03``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass(frozen=True)
class ProgressRecord:
    """One look at a phase: what ``hpo.status`` and the log lines show."""

    phase: str
    done: int
    total: int
    unit: str
    rate: float  # units per second since the phase started
    eta_s: float | None  # seconds left in the phase at that rate
    epoch: int | None = None
    epochs: int | None = None
    final: bool = False
    time: str = ""  # ISO time of the record (UTC)
    stage: str | None = None  # the part of the run, e.g. "fold 2/4" under walk-forward

    def line(self) -> str:
        """``epoch 3/10, train 1,200/4,000 steps, 41 steps/s, epoch ETA 1:08`` (after
        ``fold 2/4, `` inside a walk-forward fold)."""
        parts = [self.stage] if self.stage else []
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}" + (f"/{self.epochs}" if self.epochs else ""))
        parts.append(f"{self.phase} {self.done:,}/{self.total:,} {self.unit}")
        rate = f"{self.rate:.3g}" if self.rate < 100 else f"{self.rate:,.0f}"
        parts.append(f"{rate} {self.unit}/s")
        label = "epoch ETA" if self.phase == "train" and self.epoch is not None else "ETA"
        parts.append("done" if self.final else f"{label} {clock_text(self.eta_s)}")
        return ", ".join(parts)

    def to_attr(self) -> dict[str, Any]:
        out = asdict(self)
        out["rate"] = round(self.rate, 3)
        out["eta_s"] = None if self.eta_s is None else round(self.eta_s, 1)
        return out


class Phase:
    """A phase in progress (module docstring). ``total`` may grow if the work does."""

    def __init__(self, reporter: Reporter, phase: str, *, total: int, unit: str,
                 epoch: int | None = None, epochs: int | None = None) -> None:
        self.reporter = reporter
        self.phase, self.total, self.unit = phase, max(0, int(total)), unit
        self.epoch, self.epochs = epoch, epochs
        self.stage = reporter.stage
        self.done = 0
        self.started = reporter.clock()
        self._next = self.started + reporter.every_s
        self._closed = False
        reporter.opened(self)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.reporter.advanced(self, n)
        if self.reporter.clock() >= self._next:
            self._next = self.reporter.clock() + self.reporter.every_s
            self.reporter.emit(self.record())

    def record(self, *, final: bool = False) -> ProgressRecord:
        elapsed = max(self.reporter.clock() - self.started, 1e-9)
        rate = self.done / elapsed
        left = max(self.total - self.done, 0)
        eta = left / rate if rate > 0 else None
        return ProgressRecord(phase=self.phase, done=self.done, total=self.total,
                              unit=self.unit, rate=rate, eta_s=0.0 if final else eta,
                              epoch=self.epoch, epochs=self.epochs, final=final,
                              time=datetime.now(UTC).isoformat(timespec="seconds"),
                              stage=self.stage)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.reporter.closed(self)
        self.reporter.emit(self.record(final=True))

    def __enter__(self) -> Phase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullPhase:
    """A phase nobody watches (a run without a context): ``advance`` and ``close`` do
    nothing."""

    def advance(self, n: int = 1) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> NullPhase:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def phase_of(ctx: Any, name: str, *, total: int, unit: str, epoch: int | None = None,
             epochs: int | None = None) -> Phase | NullPhase:
    """``ctx.phase(...)``, or a :class:`NullPhase` when ``ctx`` is None."""
    if ctx is None:
        return NullPhase()
    return ctx.phase(name, total=total, unit=unit, epoch=epoch, epochs=epochs)


class Reporter:
    """Shows and forwards a trial's progress records (module docstring).

    ``enabled`` False (``--quiet``, ``[run] progress = false``) shows nothing and forwards
    nothing; ``bars`` None decides by whether stderr is a terminal.
    """

    def __init__(self, *, prefix: str = "", enabled: bool = True,
                 every_s: float = DEFAULT_EVERY_S, bars: bool | None = None,
                 on_record: Callable[[ProgressRecord], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.prefix = prefix
        self.enabled = enabled
        self.every_s = float(every_s)
        self.bars = bool(sys.stderr.isatty()) if bars is None else bars
        self.on_record = on_record
        self.clock = clock
        self.stage: str | None = None  # set by a recipe: the part of the run phases belong to
        self._bar: Any = None

    def phase(self, name: str, *, total: int, unit: str, epoch: int | None = None,
              epochs: int | None = None) -> Phase:
        return Phase(self, name, total=total, unit=unit, epoch=epoch, epochs=epochs)

    # -- what a Phase calls -----------------------------------------------------------------
    def opened(self, phase: Phase) -> None:
        if self.enabled and self.bars:
            from tqdm import tqdm

            stage = f"{phase.stage} " if phase.stage else ""
            desc = f"{self.prefix}{stage}{phase.phase}"
            if phase.epoch is not None:
                desc = f"{self.prefix}{stage}epoch {phase.epoch}" + (
                    f"/{phase.epochs}" if phase.epochs else "") + f" {phase.phase}"
            self._bar = tqdm(total=phase.total, desc=desc, unit=phase.unit.rstrip("s") or "it",
                             leave=False, file=sys.stderr, mininterval=1.0, dynamic_ncols=True)

    def advanced(self, phase: Phase, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def closed(self, phase: Phase) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def emit(self, record: ProgressRecord) -> None:
        if not self.enabled:
            return
        if not self.bars or record.final:  # a bar vanishes at its end: the line stays
            log.info("%s%s", self.prefix, record.line())
        if self.on_record is not None:
            self.on_record(record)
