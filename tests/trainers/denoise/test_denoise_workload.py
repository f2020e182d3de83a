"""The denoise workload: data, blob diagnostics, learning, SGLD, CLI and exact resume."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from trainers.cli import main
from trainers.context import TrialContext
from trainers.denoise import WORKLOAD, TrainConfig
from trainers.denoise.blobs import blob_diagnostics
from trainers.denoise.data import build_data, clean_signals
from trainers.denoise.model import TwoLayerDenoiser, squared_error
from trainers.errors import StopRequested, UserError

TINY = dict(
    d=32,
    hidden=64,
    n_train=4096,
    n_test=1024,
    epochs=6,
    batch_size=256,
    lr=0.02,
    enc_init=0.1,
    dec_init=0.1,
    noise_var=0.05,
    device="cpu",
)
TINY_FLAGS = [
    "--d",
    "16",
    "--hidden",
    "32",
    "--n-train",
    "512",
    "--n-test",
    "256",
    "--epochs",
    "1",
    "--batch-size",
    "128",
    "--device",
    "cpu",
]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # The trainer sizes its thread pools from OMP_NUM_THREADS; tests share a small machine.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_supports_are_distinct_two_hot_and_zero_output_scores_sparsity() -> None:
    data = build_data(d=16, sparsity=2, noise_var=0.1, n_train=500, n_test=100, data_seed=3)
    support = data.train_support
    assert support.shape == (500, 2)
    assert bool((support[:, 0] != support[:, 1]).all())
    clean = clean_signals(support, d=16)
    assert torch.equal(clean.sum(dim=1), torch.full((500,), 2.0))
    assert float(squared_error(torch.zeros_like(clean), clean)) == pytest.approx(2.0)
    # Same data_seed -> same data set for every trial of a study.
    again = build_data(d=16, sparsity=2, noise_var=0.1, n_train=500, n_test=100, data_seed=3)
    assert torch.equal(again.test_support, data.test_support)


def test_training_beats_zero_output_baseline(tmp_path) -> None:
    config = TrainConfig(**TINY)
    metrics = WORKLOAD.train(config, TrialContext(tmp_path))
    baseline = float(config.sparsity)  # predicting zeros misses each hot coordinate by 1
    assert set(metrics) == set(WORKLOAD.metrics)
    assert metrics["test_loss"] < 0.4 * baseline, metrics
    history = json.loads((tmp_path / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, config.epochs + 1))
    assert history[-1]["test_loss"] < history[0]["test_loss"]


def test_untrained_network_is_no_better_than_zero_output() -> None:
    # With small initial weights the untrained network outputs ~0: the same baseline.
    torch.manual_seed(0)
    model = TwoLayerDenoiser(d=32, hidden=64, enc_init=0.1, dec_init=0.1)
    data = build_data(d=32, sparsity=2, noise_var=0.05, n_train=1, n_test=512, data_seed=0)
    clean = clean_signals(data.test_support, d=32)
    with torch.no_grad():
        loss = float(squared_error(model(clean + 0.05**0.5 * torch.randn_like(clean)), clean))
    assert loss == pytest.approx(2.0, abs=0.1)


def test_blob_diagnostics_count_planted_blobs() -> None:
    rng = np.random.default_rng(0)
    d, hidden = 40, 50
    enc = rng.normal(0.0, 0.01, size=(hidden, d))
    dec = rng.normal(0.0, 0.01, size=(d, hidden))
    # Plant matched read/write pairs: 100 at (+1, +1), 100 at (-1, -1).
    cells = rng.choice(hidden * d, size=200, replace=False)
    for k, cell in enumerate(cells):
        i, j = divmod(int(cell), d)
        sign = 1.0 if k < 100 else -1.0
        enc[i, j] = sign + rng.normal(0, 0.01)
        dec[j, i] = sign + rng.normal(0, 0.01)
    out = blob_diagnostics(
        torch.tensor(enc), torch.tensor(dec), eps=0.3, min_samples=10, seed=0
    )
    assert out["n_clusters"] == 3.0
    assert out["silhouette"] > 0.8
    assert out["weight_corr"] > 0.99

    one_blob = blob_diagnostics(
        torch.randn(hidden, d),
        torch.randn(d, hidden),
        eps=0.5,
        min_samples=10,
        seed=0,
    )
    assert one_blob["n_clusters"] == 1.0
    assert math.isnan(one_blob["silhouette"])  # undefined for a single cluster
    assert abs(one_blob["weight_corr"]) < 0.1


def test_rare_matched_pairs_still_form_blobs() -> None:
    # As after training at scale: one matched pair per unit, 1 in d of all pairs (here 1 in
    # 400 of 160k points), too rare for a uniform subsample to see.
    d = hidden = 400
    g = torch.Generator().manual_seed(0)
    enc = torch.randn(hidden, d, generator=g) * 0.01
    dec = torch.randn(d, hidden, generator=g) * 0.01
    for i in range(hidden):
        sign = 1.0 if i % 2 else -1.0
        enc[i, i], dec[i, i] = sign, 1.5 * sign
    out = blob_diagnostics(enc, dec, eps=0.5, min_samples=10, seed=0)
    assert out["n_clusters"] == 3.0
    assert out["silhouette"] > 0.9


def test_adam_is_weight_decay_free_adamw_and_sgld_adds_noise(tmp_path) -> None:
    base = dict(TINY, epochs=1, n_train=1024)
    runtime = TrainConfig(**base).runtime()
    assert (runtime.optimizer, runtime.weight_decay) == ("adamw", 0.0)
    adam = WORKLOAD.train(TrainConfig(**base), TrialContext(tmp_path / "adam"))
    cold = WORKLOAD.train(
        TrainConfig(**base, optimizer="sgld", sgld_temperature=0.0),
        TrialContext(tmp_path / "cold"),
    )
    hot = WORKLOAD.train(
        TrainConfig(**base, optimizer="sgld", sgld_temperature=1e-2),
        TrialContext(tmp_path / "hot"),
    )
    # At temperature 0 SGLD is exactly the Adam run; a hot chain wanders off.
    assert cold["test_loss"] == adam["test_loss"]
    assert hot["test_loss"] != adam["test_loss"]


@pytest.mark.parametrize(
    "change",
    [
        {"lr": 0.005},
        {"batch_size": 128},
        {"enc_init": 0.05},
        {"dec_init": 0.05},
        {"epochs": 2},
        {"noise_var": 0.2},
        {"hidden": 48},
    ],
)
def test_every_swept_setting_changes_the_run(tmp_path, change) -> None:
    base = dict(TINY, epochs=1, n_train=1024)
    ref = WORKLOAD.train(TrainConfig(**base), TrialContext(tmp_path / "ref"))
    other = WORKLOAD.train(TrainConfig(**{**base, **change}), TrialContext(tmp_path / "other"))
    assert other["test_loss"] != ref["test_loss"]


def test_config_reports_every_problem_at_once() -> None:
    with pytest.raises(UserError) as err:
        TrainConfig(sparsity=0, lr=-1.0, enc_init=0.0, batch_size=10, n_train=5)
    text = str(err.value)
    for name in ("sparsity=0", "lr=-1.0", "enc_init=0.0", "batch_size=10"):
        assert name in text


def test_cli_runs_and_writes_metrics(tmp_path, capsys) -> None:
    assert main("denoise", [*TINY_FLAGS, "--output", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved["metrics"]) == set(WORKLOAD.metrics)
    assert saved["config"]["hidden"] == 32
    assert saved["metrics"]["test_loss"] < 2.0


def test_cli_bad_value_is_one_line_error(tmp_path, capsys) -> None:
    assert main("denoise", [*TINY_FLAGS, "--lr", "-1", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: ") and "lr=-1.0" in err[0]
    assert not (tmp_path / "metrics.json").exists()


class _StopAfterFirstCheckpoint(TrialContext):
    """A context whose stop request fires right after epoch 1 is saved (like SIGTERM)."""

    def checkpoint(self, state, *, epoch):
        super().checkpoint(state, epoch=epoch)
        self.request_stop("test: stop after epoch 1")


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path) -> None:
    config = TrainConfig(**dict(TINY, epochs=3, n_train=1024))
    full = WORKLOAD.train(config, TrialContext(tmp_path / "full"))

    with pytest.raises(StopRequested):
        WORKLOAD.train(config, _StopAfterFirstCheckpoint(tmp_path / "cut"))
    assert len(json.loads((tmp_path / "cut" / "history.json").read_text())) == 1
    resumed = WORKLOAD.train(config, TrialContext(tmp_path / "cut"))

    for key in ("test_loss", "train_loss", "n_clusters", "weight_corr"):
        assert resumed[key] == pytest.approx(full[key], rel=1e-9, abs=1e-12), key
    history = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]


def test_config_fields_are_the_cli_flags() -> None:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {"lr", "batch_size", "enc_init", "dec_init", "epochs", "optimizer"} <= names


def test_resume_with_other_settings_is_refused(tmp_path) -> None:
    config = TrainConfig(**dict(TINY, epochs=1, n_train=1024))
    WORKLOAD.train(config, TrialContext(tmp_path))
    changed = dataclasses.replace(config, lr=0.01, epochs=2)
    with pytest.raises(UserError, match=r"other settings \(epochs: 1 -> 2, lr: 0.02 -> 0.01\)"):
        WORKLOAD.train(changed, TrialContext(tmp_path))
    # The machine is not a setting: the same run may continue on another device.
    assert WORKLOAD.train(dataclasses.replace(config, device="auto"), TrialContext(tmp_path))
