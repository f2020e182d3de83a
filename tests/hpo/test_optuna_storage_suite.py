"""Optuna's own storage tests, run against ``hpo.storage.open_storage``.

The tests come from the sdist of the installed Optuna (they are not in its wheel, and are not
copied into this repository): ``pip download --no-binary :all: --no-deps optuna==<version>``
from the index that installs our dependencies, extracted once to ``<venv>/optuna-sdist/`` so
later runs do not download again. ``tests/storages_tests/test_storages.py`` and
``test_heartbeat.py`` run in a pytest subprocess with the adapter plugin
(``tests/hpo/optuna_storage_adapter.py``), on SQLite and on PostgreSQL, heartbeats on and off.
Every case must pass, except those the adapter lists as failing on plain ``RDBStorage`` too.

``make test`` runs the modes this service changes (heartbeats on, both backends, and the
grpc_rdb mode on SQLite: the service's heartbeat client behind Optuna's proxy; all at once:
the heartbeat tests mostly sleep). ``make test-optuna-storage`` runs the full matrix
(``HPO_OPTUNA_SUITE=full``: heartbeats off, and grpc_rdb on PostgreSQL too).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from tests.conftest import PG_ADMIN_URL, postgres_available

SUITE_FILES = ("tests/storages_tests/test_storages.py", "tests/storages_tests/test_heartbeat.py")
ADAPTER_DIR = Path(__file__).resolve().parent
CACHE_DIR = Path(sys.prefix) / "optuna-sdist"
DOWNLOAD_TIMEOUT_S = 120
# All selected runs together (they run at once). One takes 3-5 minutes on a quiet 2-core
# machine (Optuna's heartbeat tests sleep ~2 of them), the four of the full matrix ~12 minutes
# on a busy one.
SUITE_TIMEOUT_S = 1800
FULL_ENV = "HPO_OPTUNA_SUITE"


def optuna_tests_dir(version: str = optuna.__version__) -> Path:
    """The ``tests/`` tree of Optuna ``version``'s sdist, downloaded and extracted once.

    Only ``tests/`` is extracted: the sdist's ``optuna/`` package must not shadow the
    installed one the tests are meant to run against. Raises ``RuntimeError`` with pip's
    reason when the index cannot be reached."""
    target = CACHE_DIR / f"optuna-{version}"
    if (target / "tests" / "storages_tests").is_dir():
        return target / "tests"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
               "--no-input", "--timeout", "15", "--retries", "1", "--disable-pip-version-check",
               "-d", tmp, f"optuna=={version}"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=DOWNLOAD_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"pip download of optuna=={version} took over "
                               f"{DOWNLOAD_TIMEOUT_S} s") from None
        archives = sorted(Path(tmp).glob(f"optuna-{version}.tar.gz"))
        if done.returncode != 0 or not archives:
            lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
            raise RuntimeError(f"cannot download the optuna=={version} sdist: "
                               f"{lines[-1] if lines else 'pip failed'}")
        staging = Path(tmp) / "extracted"
        prefix = f"optuna-{version}/tests/"
        with tarfile.open(archives[0]) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            tar.extractall(staging, members=members, filter="data")
        try:
            # Atomic: a concurrent run either sees the whole tree or none of it.
            (staging / f"optuna-{version}").rename(target)
        except OSError:
            if not (target / "tests" / "storages_tests").is_dir():
                raise
    return target / "tests"


@dataclass(frozen=True)
class Outcome:
    passed: int
    failed: list[str]
    xfailed: int
    skipped: int
    output: str


def start_suite(tests_dir: Path, *, backend: str, heartbeat: str, storage: str,
                report: Path, mode: str = "rdb") -> subprocess.Popen[str]:
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(ADAPTER_DIR.parent.parent), str(ADAPTER_DIR)]),
           "HPO_SUITE_BACKEND": backend, "HPO_SUITE_HEARTBEAT": heartbeat,
           "HPO_SUITE_STORAGE": storage, "HPO_SUITE_PG_ADMIN_URL": PG_ADMIN_URL,
           "HPO_SUITE_MODE": mode}
    cmd = [sys.executable, "-m", "pytest", "-p", "optuna_storage_adapter",
           "-p", "no:cacheprovider", "-q", "--color=no", "-rfE", f"--junitxml={report}",
           *SUITE_FILES]
    # Run from the sdist's root so that its own pytest settings (pyproject.toml) apply.
    return subprocess.Popen(cmd, cwd=tests_dir.parent, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish_suite(proc: subprocess.Popen[str], report: Path, *, deadline: float) -> Outcome:
    try:
        output, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"Optuna's storage suite ran over {SUITE_TIMEOUT_S} s:\n{output[-3000:]}")
    if not report.exists():
        pytest.fail(f"Optuna's storage suite did not run (exit {proc.returncode}):\n"
                    f"{output[-3000:]}")
    passed, failed, xfailed, skipped = 0, [], 0, 0
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            failed.append(name)
        elif "skipped" in kinds:
            message = next(c.get("type", "") for c in case if c.tag == "skipped")
            if message == "pytest.xfail":
                xfailed += 1
            else:
                skipped += 1
        else:
            passed += 1
    return Outcome(passed, failed, xfailed, skipped, output)


# (backend, heartbeats, mode): "rdb" is Optuna's two RDB modes on the service storage; "grpc"
# its grpc_rdb mode, the service storage behind Optuna's proxy and the service's heartbeat
# client in front (python -m hpo.proxy, --storage grpc://).
MODES = [("sqlite", "on", "rdb"), ("postgres", "on", "rdb"), ("sqlite", "off", "rdb"),
         ("postgres", "off", "rdb"), ("sqlite", "on", "grpc"), ("postgres", "on", "grpc")]
# Every case of a run: test_storages.py and test_heartbeat.py for Optuna's two RDB modes, or
# for its one grpc_rdb mode.
CASES = {"rdb": 149, "grpc": 78}
# What `make test` runs; the rest is the full matrix (make test-optuna-storage).
QUICK = {("sqlite", "on", "rdb"), ("postgres", "on", "rdb"), ("sqlite", "on", "grpc")}


@pytest.fixture(scope="module")
def tests_dir() -> Path:
    try:
        return optuna_tests_dir()
    except RuntimeError as exc:
        pytest.skip(f"Optuna's own storage tests unavailable: {exc}")


@pytest.fixture(scope="module")
def suite_runs(tests_dir: Path, tmp_path_factory: pytest.TempPathFactory,
               ) -> dict[tuple[str, str, str], Outcome | str]:
    """Every selected backend and mode, started together (they mostly sleep or wait on the
    database) and collected; a mode that cannot run maps to its skip reason."""
    full = os.environ.get(FULL_ENV) == "full"
    pg_reason = postgres_available()
    out = tmp_path_factory.mktemp("optuna_suite")
    started: dict[tuple[str, str, str], tuple[subprocess.Popen[str], Path]] = {}
    results: dict[tuple[str, str, str], Outcome | str] = {}
    for key in MODES:
        backend, heartbeat, mode = key
        if key not in QUICK and not full:
            results[key] = (f"runs in the full matrix only: make test-optuna-storage "
                            f"({FULL_ENV}=full)")
        elif backend == "postgres" and pg_reason:
            results[key] = pg_reason
        elif mode == "grpc" and importlib.util.find_spec("grpc") is None:
            results[key] = "the grpc_rdb mode needs grpcio"
        else:
            report = out / f"{backend}_{heartbeat}_{mode}.xml"
            started[key] = (start_suite(
                tests_dir, backend=backend, heartbeat=heartbeat, storage="service",
                report=report, mode=mode), report)
    deadline = time.monotonic() + SUITE_TIMEOUT_S
    try:
        for key, (proc, report) in started.items():
            results[key] = finish_suite(proc, report, deadline=deadline)
    finally:
        for proc, _ in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


# The project's per-test limit (10 minutes) would count the fixture's whole run.
@pytest.mark.timeout(SUITE_TIMEOUT_S + 120)
@pytest.mark.parametrize(("backend", "heartbeat", "mode"), MODES,
                         ids=[f"{b}-heartbeat_{h}-{m}" for b, h, m in MODES])
def test_optuna_storage_suite_passes(suite_runs: dict[tuple[str, str, str], Outcome | str],
                                     backend: str, heartbeat: str, mode: str) -> None:
    outcome = suite_runs[backend, heartbeat, mode]
    if isinstance(outcome, str):
        pytest.skip(outcome)
    print(f"{backend} heartbeats {heartbeat} {mode}: {outcome.passed} passed, "
          f"{len(outcome.failed)} failed, {outcome.xfailed} known failures, "
          f"{outcome.skipped} skipped")
    assert outcome.failed == [], outcome.output[-6000:]
    assert outcome.passed + outcome.xfailed + outcome.skipped == CASES[mode]
    assert outcome.passed >= CASES[mode] - 9


def test_the_sdist_is_downloaded_once(tests_dir: Path) -> None:
    """The second look finds the extracted tree: no download, the same path."""
    assert (tests_dir / "storages_tests" / "test_storages.py").is_file()
    assert optuna_tests_dir() == tests_dir
    # Only the tests were extracted: the sdist's optuna package cannot shadow the installed one.
    assert not (tests_dir.parent / "optuna").exists()


def test_an_unreachable_index_is_a_clear_reason(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """No cache and no index (nothing listens on port 9): the reason names the download,
    which the suite shows as its skip reason."""
    import tests.hpo.test_optuna_storage_suite as suite

    monkeypatch.setattr(suite, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(RuntimeError, match=r"cannot download the optuna==5\.0\.0 sdist: "):
        optuna_tests_dir("5.0.0")
    assert not (tmp_path / "cache" / "optuna-5.0.0").exists()
