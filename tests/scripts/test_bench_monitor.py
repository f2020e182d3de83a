"""``scripts/bench_monitor.py`` at a toy size: the three mornings run, the kept state makes the
daily morning score only the new dates, and the report says so."""

from __future__ import annotations

import json
from pathlib import Path

from scripts.bench_monitor import main


def test_the_monitor_benchmark_runs_and_reports(tmp_path: Path, capsys) -> None:
    out = tmp_path / "monitor.json"
    assert main(["--stocks", "60", "--features", "8", "--history", "160", "--live", "6",
                 "--hidden", "8", "--dir", str(tmp_path / "work"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    runs = list(report["runs"].values())
    assert [r["live_dates"] for r in runs] == [4, 5, 5]  # the newest 2 dates await returns
    # the kept state: the daily morning scores the new date and the 2 unrealised before it
    assert [r["scored_dates"] for r in runs] == [6, 3, 7]
    assert runs[1]["last_scored"] == runs[2]["last_scored"] > runs[0]["last_scored"]
    assert report["target_s"] == 60 and isinstance(report["target_met"], bool)
    assert "the daily morning:" in capsys.readouterr().out
    assert not (tmp_path / "work").exists()  # the panel is deleted afterwards
