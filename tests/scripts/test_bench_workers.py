"""bench_workers on a tiny run: both ways meet the target exactly, and the proxy holds fewer
database connections than the direct workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import bench_workers
from tests.conftest import postgres_available


def test_a_tiny_run_both_ways(tmp_path: Path) -> None:
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("grpc", reason="the proxy needs grpcio")
    assert bench_workers.main(["--workers", "2", "--trials-per-worker", "2", "--sleep-s",
                               "0.2", "--work", str(tmp_path / "runs"), "--out",
                               str(tmp_path)]) == 0
    runs = {r["way"]: r for r in json.loads((tmp_path / "workers.json").read_text())["runs"]}
    for run in runs.values():
        assert run["exit"] == 0 and run["target_met_exactly"] and run["complete"] == 4
        assert run["start_gap_p50_s"] is not None and run["start_gap_p50_s"] >= 0
    # the direct run: each of the 2 workers (and the parent) holds its own connections
    assert runs["direct"]["peak_connections"] > runs["proxy"]["peak_connections"] >= 1
