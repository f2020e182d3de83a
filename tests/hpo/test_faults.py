"""Out-of-memory and divergence inside real ATFT-GAT trials, driven through ``hpo.run``.

The runtime's fault injection raises a genuine ``torch.OutOfMemoryError`` (or a NaN loss) inside
the running trial, so the retry path runs on CPU exactly as it would on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.run import main

STUDY = """
name = "faults"
workload = "atft_gat"
n_trials = {n_trials}
[[objectives]]
metric = "rank_ic"
direction = "maximize"
{second_objective}
[sampler]
name = "random"
seed = 0
[data]
n_stocks = 64
n_dates = 120
[trainer]
epochs = 1
max_steps_per_epoch = 2
hidden_size = 16
attn_heads = 2
gat_heads = 2
gat_layers = 1
lookback = 10
graph_window = 20
graph_k = 4
warmup_steps = 0
min_batch = {min_batch}
[search_space.batch_size]
type = "categorical"
choices = [512, 64]
{enqueue}
"""

ENQUEUE = "\n".join(f"[[enqueue]]\nname = \"b{b}\"\nparams = {{ batch_size = {b} }}"
                    for b in (512, 64))
MO = '[[objectives]]\nmetric = "val_loss"\ndirection = "minimize"'


def run_study(tmp_path: Path, monkeypatch, *, env: dict[str, str], n_trials: int = 2,
              min_batch: int = 16, multi: bool = False) -> optuna.Study:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "faults.toml"
    path.write_text(STUDY.format(n_trials=n_trials, min_batch=min_batch, enqueue=ENQUEUE,
                                 second_objective=MO if multi else ""))
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    code = main(["--study", str(path), "--storage", url, "--output", str(tmp_path / "o")])
    assert code == 0
    return optuna.load_study(study_name="faults", storage=url)


def test_oom_halves_batch_inside_the_trial(tmp_path: Path, monkeypatch) -> None:
    study = run_study(tmp_path, monkeypatch, env={"HPO_INJECT_OOM_ABOVE_BATCH": "128"})
    first, second = study.trials[0], study.trials[1]
    assert first.state == TrialState.COMPLETE and first.params["batch_size"] == 512
    assert [(r["batch_before"], r["batch_after"]) for r in first.user_attrs["oom_retries"]] == [
        (512, 256), (256, 128)]
    assert first.user_attrs["final_batch_size"] == 128
    # the next trial starts from its own sampled batch, not the halved one
    assert second.state == TrialState.COMPLETE and second.user_attrs["oom_retries"] == []
    assert second.user_attrs["final_batch_size"] == 64


def test_oom_below_minimum_fails_trial_and_study_goes_on(tmp_path: Path, monkeypatch) -> None:
    study = run_study(tmp_path, monkeypatch, env={"HPO_INJECT_OOM_ABOVE_BATCH": "128"},
                      n_trials=1, min_batch=256)
    first, second = study.trials[0], study.trials[1]
    assert first.state == TrialState.FAIL
    assert "out of memory at micro-batch 256" in first.user_attrs["fail_reason"]
    assert "minimum batch is 256" in first.user_attrs["fail_reason"]
    assert second.state == TrialState.COMPLETE and second.params["batch_size"] == 64


@pytest.mark.parametrize("multi", [False, True])
def test_nan_loss_ends_only_that_trial(tmp_path: Path, monkeypatch, multi: bool) -> None:
    study = run_study(tmp_path, monkeypatch, multi=multi,
                      env={"HPO_INJECT_NAN_AT_STEP": "2", "HPO_INJECT_TRIALS": "0"})
    first = study.trials[0]
    reason_key = "fail_reason" if multi else "prune_reason"
    assert first.state == (TrialState.FAIL if multi else TrialState.PRUNED)
    assert "loss became nan at step 2" in first.user_attrs[reason_key]
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 2  # the study still reaches its target
    assert study.trials[-1].state == TrialState.COMPLETE
