"""``hpo.api`` (the commands as typed functions) and ``python -m hpo <command>`` (one front
door): each does what its command does, errors included."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import polars as pl
import pytest
from optuna.trial import TrialState

from hpo import api
from hpo.__main__ import COMMANDS
from hpo.__main__ import main as hpo_main
from tests.conftest import REPO, run_cli
from tests.hpo.test_predict import study  # noqa: F401 - the module's file-panel study fixture
from tests.hpo.test_run import study_file


def test_run_study_runs_and_resumes_like_the_command(tmp_path: Path) -> None:
    path = study_file(tmp_path)
    out = tmp_path / "out"
    assert api.run_study(path, output=out, quiet=True) == 0
    url = f"sqlite:///{out / 'hpo.db'}"
    trials = optuna.load_study(study_name="toy", storage=url).get_trials(
        states=(TrialState.COMPLETE,))
    assert len(trials) == 4
    assert api.run_study(path, output=out, quiet=True) == 0  # the target is met: nothing new
    assert len(optuna.load_study(study_name="toy", storage=url).trials) == 4
    assert api.run_study(path, output=out, n_trials=5, quiet=True) == 0  # raised: one more
    assert len(api.load_study("toy", output=out).trials) == 5


def test_user_errors_raise_with_the_commands_words_and_write_nothing(tmp_path: Path) -> None:
    path = study_file(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(api.UserError, match="--n-trials must be >= 1, got 0"):
        api.run_study(path, output=out, n_trials=0)
    with pytest.raises(api.UserError, match="no such study file|not found|does not exist"):
        api.run_study(tmp_path / "missing.toml", output=out)
    assert not out.exists()
    with pytest.raises(api.UserError, match="pbo_blocks must be even"):
        api.evaluate("toy", output=out, pbo_blocks=3)
    assert not out.exists()


def test_the_api_gives_what_the_commands_write(study: Path) -> None:  # noqa: F811
    out = study / "out"
    report = api.evaluate("held", output=out)  # up to date: the report on disk, unchanged
    assert report == json.loads((out / "held" / "test_report.json").read_text())
    meta = api.predict("held", source=study / "panel.parquet", out=study / "api.parquet",
                       output=out)
    assert run_cli(["hpo", "predict", "--study", "held", "--output", str(out), "--source",
                    str(study / "panel.parquet"), "--out", str(study / "cli.parquet")],
                   cwd=study).returncode == 0
    # the same scores (another process may sum in another thread order: equal to float error)
    from polars.testing import assert_frame_equal

    assert_frame_equal(pl.read_parquet(study / "api.parquet"),
                       pl.read_parquet(study / "cli.parquet"), check_exact=False, rel_tol=1e-5)
    assert meta["trial"] == report["chosen"]


def test_one_front_door_lists_and_runs_every_command(tmp_path: Path, capsys) -> None:
    assert hpo_main([]) == 2
    listing = capsys.readouterr().out
    for name in COMMANDS:
        assert re.search(rf"^  {name}\s", listing, flags=re.M), name
    # every command of the README's table is one of them
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"`python -m hpo\.(\w+)", readme))
    assert documented <= set(COMMANDS), documented - set(COMMANDS)
    assert hpo_main(["frobnicate"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown command 'frobnicate'") and "\n" not in err
    # `python -m hpo run` is `python -m hpo.run`: same options, same exit codes
    path = study_file(tmp_path)
    done = run_cli(["hpo", "run", "--study", str(path), "--output", str(tmp_path / "out"),
                    "--quiet"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "study toy: 4/4 finished" in done.stdout
    bad = run_cli(["hpo", "run", "--study", str(path), "--n-trials", "0"], cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --n-trials must be >= 1, got 0"
