"""Crash and concurrency safety, for real: SIGKILL mid-build, several builders at once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from cache import load_or_build, open_cache
from cache.core import ENV_BUILD_DELAY, ENV_PAUSE_FILE
from cache.feature_cache import cache_dirs
from cache.testing import make_panel, panel_spec

REPO = Path(__file__).resolve().parents[2]
# A builder process: import first, announce readiness, wait for "go", build, report.
WORKER = """
import json, logging, os, sys, time
from pathlib import Path
from cache import load_or_build
from cache.testing import panel_spec
logging.basicConfig(level=logging.INFO, format="%(message)s")
source, root, ready, go = sys.argv[1:5]
Path(ready).write_text("")
while not Path(go).exists():
    time.sleep(0.005)
fc = load_or_build(Path(source), Path(root), panel_spec())
print(json.dumps({"key": fc.key, "built": fc.manifest["build"]["pid"] == os.getpid(),
                  "total": float(fc.features.sum(dtype="float64"))}))
"""


def _spawn(tmp_path: Path, source: Path, root: Path, tag: str, extra_env: dict[str, str],
           ) -> tuple[subprocess.Popen[str], Path]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra_env}
    ready = tmp_path / f"ready-{tag}"
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(source), str(root), str(ready),
         str(tmp_path / "go")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    return proc, ready


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.01)


def test_sigkill_mid_build_leaves_the_previous_cache_and_no_torn_one(tmp_path: Path) -> None:
    source = tmp_path / "panel.parquet"
    root = tmp_path / "caches"
    make_panel(seed=6).write_parquet(source)
    previous = load_or_build(source, root, panel_spec())
    before = previous.features.copy()

    changed = make_panel(seed=6).with_columns(pl.col("f0") * -1.0)
    changed.write_parquet(source)
    paused = tmp_path / "paused"
    proc, _ = _spawn(tmp_path, source, root, "killed", {ENV_PAUSE_FILE: str(paused)})
    (tmp_path / "go").write_text("")
    _wait_for(paused)  # the data file is written, the manifest and rename are not
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    assert cache_dirs(root) == [previous.path]  # no new cache, torn or whole
    np.testing.assert_array_equal(open_cache(previous.path).features, before)
    torn = [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert len(torn) == 1 and not (torn[0] / "manifest.json").exists()

    rebuilt = load_or_build(source, root, panel_spec())  # the lock died with the process
    assert rebuilt.key != previous.key
    np.testing.assert_array_equal(rebuilt.features[..., 0], -before[..., 0])
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())  # leftover removed


def test_concurrent_builders_build_once_and_all_reuse(tmp_path: Path) -> None:
    source = tmp_path / "panel.parquet"
    root = tmp_path / "caches"
    make_panel(seed=7, n_stocks=20, n_dates=10).write_parquet(source)
    # The delay holds the winner inside its build long enough for every other process
    # to reach the lock while the cache does not exist yet.
    workers = [_spawn(tmp_path, source, root, str(i), {ENV_BUILD_DELAY: "1.0"})
               for i in range(4)]
    for _, ready in workers:
        _wait_for(ready)
    (tmp_path / "go").write_text("")
    results, logs = [], []
    for proc, _ in workers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
        logs.append(err)

    assert sum(r["built"] for r in results) == 1
    assert len({r["key"] for r in results}) == 1
    assert len({r["total"] for r in results}) == 1
    assert [p.name for p in cache_dirs(root)] == [results[0]["key"]]
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())
    waited = [e for e, r in zip(logs, results, strict=True) if not r["built"]]
    # Usually "... built by another process meanwhile"; a process slowed down by a busy
    # machine may arrive after the build and then just reuses it. Either way: no build.
    assert all(f"reusing cache {results[0]['key']}" in e for e in waited), waited
    assert not any(re.search(r"^building cache", e, re.MULTILINE) for e in waited)
