"""The dashboard in a real headless browser, against a real PostgreSQL study.

Starts ``python -m hpo.dashboard`` as a subprocess on a free port, drives Debian's Chromium
through chromedriver (selenium) and checks what a user sees: the study's name, its metric names,
its trial count, its description note and each trial's artifacts. Screenshots are kept under
``test-artifacts/`` (or ``$HPO_TEST_ARTIFACTS``). The exported HTML plots are opened from disk
to prove they render with no network. Skipped with a reason where no Chromium is installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpo import api
from hpo.export import main as export_main
from tests.conftest import REPO
from tests.hpo.test_dashboard import MULTI
from tests.hpo.test_run import study_file

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver") or \
    "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("HPO_TEST_ARTIFACTS") or REPO / "test-artifacts")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-quic", "--window-size=1400,1000")
PAGE_TIMEOUT_S = 40


def _missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set $CHROMIUM)"
    if not Path(CHROMEDRIVER).is_file():
        return f"no chromedriver at {CHROMEDRIVER} (apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e .[dev])"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()  # ends chromium and chromedriver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dashboard_server(tmp_path: Path) -> Iterator[Any]:
    """A function that starts ``python -m hpo.dashboard ARGS`` and returns its base URL."""
    procs: list[subprocess.Popen] = []

    def start(args: list[str]) -> str:
        port = _free_port()
        log = (tmp_path / "dashboard.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpo.dashboard", *args, "--port", str(port)], cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"dashboard exited {proc.returncode}: "
                            f"{(tmp_path / 'dashboard.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=2) as r:
                    if r.status == 200:
                        return base
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"dashboard did not answer within {PAGE_TIMEOUT_S} s")

    try:
        yield start
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _wait_for_text(driver: Any, *needles: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d: Any) -> str | bool:
        text = d.find_element(By.TAG_NAME, "body").text
        return text if all(n in text for n in needles) else False

    try:
        return WebDriverWait(driver, PAGE_TIMEOUT_S, poll_frequency=0.3).until(ready)
    except Exception:
        _screenshot(driver, "dashboard_timeout.png")
        text = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"page never showed {needles}; it shows:\n{text[:2000]}") from None


def _screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def test_dashboard_shows_postgres_study(pg_url: str, tmp_path: Path, browser: Any,
                                        dashboard_server: Any) -> None:
    path = study_file(tmp_path, MULTI.replace('description = "toy"',
                                              'description = "toy descent, two objectives"'))
    out = tmp_path / "out"
    assert api.run_study(str(path), storage=pg_url, output=str(out)) == 0
    study_id = optuna.load_study(study_name="toy", storage=pg_url)._study_id

    base = dashboard_server(["--study", "toy", "--storage", pg_url, "--output", str(out)])
    browser.get(f"{base}/dashboard/studies/{study_id}")
    text = _wait_for_text(browser, "toy (id=", "Pareto Front", "Objective X:")
    assert "loss" in text.split() and "score" in text.split()
    shot = _screenshot(browser, "dashboard_study.png")
    assert shot.read_bytes().startswith(b"\x89PNG")

    browser.get(f"{base}/dashboard/studies/{study_id}/trials")
    text = _wait_for_text(browser, "4 Trials", "Artifacts")
    # the per-epoch history is the learning-curve note and artifact (a record, not a user attr)
    for name in ("metrics.json", "learning_curve.png", "checkpoint.pt", "epoch",
                 "Learning curve (trial 0)"):
        assert name in text
    _screenshot(browser, "dashboard_trials.png")

    browser.get(f"{base}/dashboard/studies/{study_id}/note")
    _wait_for_text(browser, "toy descent, two objectives", "objectives: loss (minimize), "
                   "score (maximize)")
    _screenshot(browser, "dashboard_note.png")


def test_exported_plots_render_offline(tmp_path: Path, browser: Any) -> None:
    from optuna.distributions import FloatDistribution

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = optuna.create_study(study_name="plots", storage=url,
                                directions=["minimize", "maximize"])
    dists = {"a": FloatDistribution(0, 1), "b": FloatDistribution(0, 1)}
    for a, b in ((0.1, 0.9), (0.5, 0.2), (0.8, 0.4)):
        study.add_trial(optuna.trial.create_trial(params={"a": a, "b": b}, distributions=dists,
                                                  values=[a + b, a - b]))
    out = tmp_path / "out"
    assert export_main(["--study", "plots", "--storage", url, "--output", str(out)]) == 0

    browser.get((out / "plots" / "plots" / "pareto_front.html").as_uri())
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, PAGE_TIMEOUT_S).until(
        lambda d: d.execute_script("return document.querySelectorAll('.main-svg').length") > 0)
    # every resource the page loaded came from the file itself: nothing from the network
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert [u for u in loaded if u.startswith(("http:", "https:"))] == []
    assert browser.execute_script("return typeof Plotly") == "object"
    _screenshot(browser, "export_pareto_front.png")


def test_the_tear_sheet_renders_in_the_dashboard(tmp_path: Path, browser: Any,
                                                 dashboard_server: Any) -> None:
    """hpo.run opens the test period of a tiny ATFT-GAT study; the tear sheet it attaches is
    listed by optuna-dashboard and, served by it, shows the report's lines, its table and its
    nine charts."""
    import json

    from selenium.webdriver.support.ui import WebDriverWait

    from tests.hpo.test_evaluate import STUDY
    from trainers.tearsheet import PNG_NAMES

    (tmp_path / "held.toml").write_text(STUDY.replace("n_trials = 3", "n_trials = 2"))
    out = tmp_path / "out"
    assert api.run_study(str(tmp_path / "held.toml"), output=str(out)) == 0
    url = f"sqlite:///{out / 'hpo.db'}"
    study_id = optuna.load_study(study_name="held", storage=url)._study_id
    base = dashboard_server(["--study", "held", "--storage", url, "--output", str(out)])
    with urllib.request.urlopen(f"{base}/api/studies/{study_id}", timeout=10) as r:
        listed = {a["filename"]: a["artifact_id"] for a in json.load(r)["artifacts"]}
    assert "tear_sheet.html" in listed and "tear_sheet_cumulative.png" in listed

    browser.get(f"{base}/artifacts/{study_id}/{listed['tear_sheet.html']}")
    WebDriverWait(browser, PAGE_TIMEOUT_S).until(
        lambda d: d.execute_script("return document.images.length") == len(PNG_NAMES))
    widths = browser.execute_script(
        "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
    assert all(w > 300 for w in widths), widths
    text = _wait_for_text(browser, "held: trial", "(chosen)", "ridge (every feature)",
                          "sharpe_net", "Mean demeaned target of each prediction quintile",
                          "max_drawdown", "Net drawdown from the running peak",
                          "Net return of each calendar month", "the signal's decay",
                          "The held-out report", "deflated Sharpe ratio")
    assert "nothing was chosen on these dates" in text
    _screenshot(browser, "tear_sheet.png")
