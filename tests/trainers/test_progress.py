"""Progress of a long phase: lines at the configured interval in logs and pipes, counts that
only grow, one line at each phase's end, nothing when quiet."""

from __future__ import annotations

import logging
import re

import pytest

from trainers.context import TrialContext
from trainers.progress import ProgressRecord, Reporter, clock_text


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "trainers"]


def test_a_slow_phase_prints_at_the_interval_and_once_at_its_end(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    records: list[ProgressRecord] = []
    reporter = Reporter(prefix="[trial 7] ", every_s=30.0, bars=False, clock=clock,
                        on_record=records.append)
    caplog.set_level(logging.INFO, logger="trainers")
    with reporter.phase("train", total=40, unit="steps", epoch=3, epochs=10) as phase:
        for _ in range(40):
            clock.now += 2.5  # a 2.5 s step: a line every 12 steps (30 s)
            phase.advance()
    lines = _lines(caplog)
    assert len(lines) == 4  # at 30, 60, 90 s and the end (100 s)
    assert all(line.startswith("[trial 7] epoch 3/10, train ") for line in lines)
    done = [int(re.search(r"train (\d+)/40", line).group(1)) for line in lines]
    assert done == sorted(done) and done[-1] == 40 and done[0] == 12
    assert lines[0] == "[trial 7] epoch 3/10, train 12/40 steps, 0.4 steps/s, epoch ETA 1:10"
    assert lines[-1].endswith("done")
    assert [r.final for r in records] == [False, False, False, True]
    assert records[0].eta_s == pytest.approx(70.0)


def test_quiet_prints_and_forwards_nothing(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    records: list[ProgressRecord] = []
    reporter = Reporter(enabled=False, every_s=1.0, bars=False, clock=clock,
                        on_record=records.append)
    caplog.set_level(logging.INFO, logger="trainers")
    with reporter.phase("validate", total=5, unit="dates") as phase:
        for _ in range(5):
            clock.now += 10
            phase.advance()
    assert _lines(caplog) == [] and records == []


def test_a_trial_context_reports_its_phases_to_its_hook(tmp_path) -> None:
    seen: list[ProgressRecord] = []

    class Watching(TrialContext):
        def on_progress(self, record: ProgressRecord) -> None:
            seen.append(record)

    ctx = Watching(tmp_path, trial_number=2, progress_every_s=1e-9, progress_bars=False)
    with ctx.phase("graph", total=3, unit="dates") as phase:
        for _ in range(3):
            phase.advance()
    assert [r.done for r in seen] == [1, 2, 3, 3] and seen[-1].final
    assert seen[-1].line().startswith("graph 3/3 dates, ") and seen[-1].line().endswith("done")


def test_records_round_trip_through_the_attr_and_clock_text() -> None:
    record = ProgressRecord(phase="train", done=1200, total=4000, unit="steps", rate=41.0,
                            eta_s=68.0, epoch=3, epochs=10, time="2026-01-01T00:00:00+00:00")
    assert ProgressRecord(**record.to_attr()) == record
    assert record.line() == "epoch 3/10, train 1,200/4,000 steps, 41 steps/s, epoch ETA 1:08"
    assert clock_text(3725) == "1:02:05" and clock_text(None) == "?"


def test_a_stage_names_the_part_of_the_run_first() -> None:
    from trainers.progress import ProgressRecord

    record = ProgressRecord(phase="train", done=3, total=6, unit="steps", rate=2.0, eta_s=1.5,
                            epoch=1, epochs=2, stage="fold 2/4")
    assert record.line().startswith("fold 2/4, epoch 1/2, train 3/6 steps")
    assert ProgressRecord(**record.to_attr()).line() == record.line()  # as hpo.status reads it
