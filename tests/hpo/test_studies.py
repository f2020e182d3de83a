"""Every shipped CPU-sized study runs through the real entry point (one trial each)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.config import load_study_spec
from hpo.run import main

CPU_STUDIES = ["demo", "condor_cpu", "lm_cpu", "denoise_cpu"]


@pytest.mark.parametrize("name", CPU_STUDIES)
def test_cpu_study_completes_a_trial(tmp_path: Path, name: str) -> None:
    spec = load_study_spec(name)
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    assert main(["--study", name, "--storage", url, "--output", str(tmp_path),
                 "--n-trials", "1"]) == 0
    study = optuna.load_study(study_name=spec.name, storage=url)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 1
    assert study.metric_names == spec.metric_names
    trial = done[0]
    for metric, value in zip(spec.metric_names, trial.values, strict=True):
        assert trial.user_attrs[metric] == value
    metrics = json.loads((tmp_path / spec.name / f"trial_{trial.number}" / "metrics.json")
                         .read_text())
    assert metrics["objectives"] == dict(zip(spec.metric_names, trial.values, strict=True))
