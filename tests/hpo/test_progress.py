"""A running trial shows where it is: in its log lines, in storage (``hpo.status`` from another
process) and not at all with ``--quiet``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from hpo import api
from hpo.status import main as status_main
from tests.conftest import REPO
from tests.hpo.test_config import TOY

SLOW = (TOY.replace("n_trials = 4", "n_trials = 1").replace("epochs = 2", "epochs = 2\n"
        "sleep_s = 3.0\nsteps = 30")
        + "[run]\nprogress_every_s = 0.3\n")


def test_status_shows_the_phase_of_a_trial_running_in_another_process(
        tmp_path: Path, capsys) -> None:
    study = tmp_path / "slow.toml"
    study.write_text(SLOW.replace('description = "toy"', 'name = "slow"\ndescription = "toy"'))
    out = tmp_path / "out"
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "hpo.run", "--study", str(study),
                             "--output", str(out)], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.4)
            if not (out / "hpo.db").exists():
                continue
            capsys.readouterr()
            if status_main(["--study", "slow", "--output", str(out), "--json"]) != 0:
                continue
            running = json.loads(capsys.readouterr().out)["running"]
            progress = running[0].get("progress") if running else None
            if progress and progress["phase"] == "train" and not progress["final"]:
                seen.append(progress)
                if len(seen) >= 2:
                    break
        assert len(seen) >= 2, "no progress of the running trial reached storage"
        assert seen[0]["total"] == 30 and seen[0]["unit"] == "steps"
        assert 0 < seen[0]["done"] <= seen[-1]["done"] <= 30
        assert status_main(["--study", "slow", "--output", str(out)]) == 0
        text = capsys.readouterr().out
        assert re.search(r"trial 0: epoch [12]/2, train \d+/30 steps, [\d.]+ steps/s, "
                         r"(epoch ETA \d+:\d\d|done)", text), text
    finally:
        proc.wait(timeout=60)
        log.close()
    lines = (tmp_path / "run.log").read_text()
    assert re.search(r"\[trial 0\] epoch 1/2, train \d+/30 steps", lines)
    assert "[trial 0] epoch 2/2, train 30/30 steps" in lines and "done" in lines


def test_quiet_prints_no_progress(tmp_path: Path, caplog) -> None:
    study = tmp_path / "quiet.toml"
    study.write_text(SLOW.replace("sleep_s = 3.0", "sleep_s = 0.3")
                     .replace('description = "toy"', 'name = "quiet"\ndescription = "toy"'))
    caplog.set_level("INFO")
    assert api.run_study(str(study), output=str(tmp_path / "out"), quiet=True) == 0
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "[1/1]" in text  # the per-trial line stays
    assert "train 30/30 steps" not in text and "steps/s" not in text
    caplog.clear()
    assert api.run_study(str(study), output=str(tmp_path / "out2")) == 0
    assert "train 30/30 steps" in "\n".join(r.getMessage() for r in caplog.records)


def test_the_first_trial_says_what_the_study_will_take(tmp_path: Path, caplog) -> None:
    study = tmp_path / "pace.toml"
    study.write_text(TOY.replace("n_trials = 4", "n_trials = 3")
                     .replace('description = "toy"', 'name = "pace"\ndescription = "toy"'))
    caplog.set_level("INFO")
    assert api.run_study(str(study), output=str(tmp_path / "out"), quiet=True) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("expect")]
    assert len(lines) == 1, lines  # once, after the first trial
    assert re.fullmatch(r"expect about \d+:\d\d a trial here, so about \d+:\d\d for the 2 "
                        r"trial\(s\) left of this worker's share \(more --workers, or a GPU, "
                        r"to go faster\)", lines[0]), lines[0]
