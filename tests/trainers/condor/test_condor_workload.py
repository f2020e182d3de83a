"""The condor workload: selective scan vs a naive loop, market data, learning, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from trainers.cli import main
from trainers.condor import WORKLOAD, TrainConfig
from trainers.condor.data import build_data, gather_targets, gather_windows
from trainers.condor.model import CondorBrain, MambaBlock, selective_scan
from trainers.context import TrialContext

TINY = dict(n_paths=8, n_days=800, seq_len=16, horizon=20, ivr_window=126, d_model=16,
            layers=2, d_state=4, epochs=4, batch_size=64, lr=3e-3, warmup_steps=10,
            device="cpu")
TINY_FLAGS = ["--n-paths", "2", "--n-days", "700", "--seq-len", "8", "--ivr-window", "126",
              "--d-model", "8", "--layers", "1", "--d-state", "2", "--epochs", "1",
              "--batch-size", "128", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # The trainer sizes its thread pools from OMP_NUM_THREADS; tests share a small machine.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def naive_selective_scan(x, delta, A, B, C, D):
    """The recurrence exactly as written, one time step at a time."""
    batch, seq_len, d_inner = x.shape
    h = torch.zeros(batch, d_inner, A.shape[1], dtype=x.dtype)
    ys = []
    for t in range(seq_len):
        decay = torch.exp(delta[:, t, :, None] * A)  # (B, Di, N)
        h = decay * h + delta[:, t, :, None] * B[:, t, None, :] * x[:, t, :, None]
        ys.append((h * C[:, t, None, :]).sum(dim=-1) + D * x[:, t])
    return torch.stack(ys, dim=1)


def _scan_inputs(dtype, *, seq_len=37, batch=3, d_inner=5, n=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, seq_len, d_inner, generator=g, dtype=dtype)
    delta = torch.nn.functional.softplus(torch.randn(batch, seq_len, d_inner, generator=g,
                                                     dtype=dtype))
    A = -torch.rand(d_inner, n, generator=g, dtype=dtype) * 2
    B = torch.randn(batch, seq_len, n, generator=g, dtype=dtype)
    C = torch.randn(batch, seq_len, n, generator=g, dtype=dtype)
    D = torch.randn(d_inner, generator=g, dtype=dtype)
    return x, delta, A, B, C, D


@pytest.mark.parametrize("chunk", [1, 3, 8, 16, 64])
def test_parallel_scan_matches_naive_loop(chunk) -> None:
    args = _scan_inputs(torch.float32)
    expected = naive_selective_scan(*args)
    got = selective_scan(*args, chunk=chunk)
    assert got.shape == expected.shape == (3, 37, 5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_parallel_scan_gradients_match_naive_loop() -> None:
    args = [a.requires_grad_() for a in _scan_inputs(torch.float64, seq_len=20)]
    (naive_selective_scan(*args) ** 2).sum().backward()
    expected = [a.grad.clone() for a in args]
    for a in args:
        a.grad = None
    (selective_scan(*args, chunk=8) ** 2).sum().backward()
    for got, want in zip([a.grad for a in args], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_block_is_causal_and_input_selective() -> None:
    torch.manual_seed(0)
    block = MambaBlock(8, d_state=4, scan_chunk=4)
    u = torch.randn(2, 12, 8)
    later = u.clone()
    later[:, 7:] += torch.randn(2, 5, 8)
    out, out_later = block(u), block(later)
    # Changing steps 7.. leaves every earlier output untouched, and changes the later ones.
    torch.testing.assert_close(out[:, :7], out_later[:, :7])
    assert not torch.allclose(out[:, 7:], out_later[:, 7:])


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = CondorBrain(n_features=8, d_model=8, layers=3, d_state=4, n_regimes=3,
                            scan_chunk=4, grad_checkpointing=checkpointing)
        strikes, pop, regime = model(torch.ones(2, 10, 8))
        (strikes.sum() + pop.sum() + regime.sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_market_targets_and_purged_split() -> None:
    data = build_data(n_paths=3, n_days=800, seq_len=16, horizon=20, ivr_window=126,
                      val_fraction=0.2, data_seed=1)
    strikes, pop, regime = gather_targets(data, torch.cat([data.train_index, data.val_index]))
    assert torch.isfinite(strikes).all() and (strikes >= 0).all()
    # Wings are never inside the short strikes.
    assert (strikes[:, 2] >= strikes[:, 0]).all() and (strikes[:, 3] >= strikes[:, 1]).all()
    assert set(pop.unique().tolist()) == {0.0, 1.0}
    assert set(regime.unique().tolist()) == {0, 1, 2}
    for path in range(3):
        train_days = data.train_index[data.train_index[:, 0] == path, 1]
        val_days = data.val_index[data.val_index[:, 0] == path, 1]
        # Purge gap: no validation window starts before the last training label ends.
        assert int(val_days.min()) - int(train_days.max()) > 2 * 20 + 16
    assert gather_windows(data, data.val_index[:5]).shape == (5, 16, 8)


def test_training_beats_input_blind_baselines(tmp_path) -> None:
    ctx = TrialContext(tmp_path)
    metrics = WORKLOAD.train(TrainConfig(**TINY), ctx)
    base = ctx.attrs["baselines"]
    assert set(metrics) == set(WORKLOAD.metrics)
    assert metrics["regime_acc"] > base["regime_acc"] + 0.08, (metrics, base)
    assert metrics["prob_brier"] < 0.6 * base["prob_brier"], (metrics, base)
    assert metrics["strike_l1"] < base["strike_l1"], (metrics, base)
    history = json.loads((tmp_path / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "change", [{"d_model": 8}, {"layers": 1}, {"lr": 1e-3}, {"batch_size": 128}, {"epochs": 2},
               {"optimizer": "adabelief"}],
)
def test_every_swept_setting_changes_the_run(tmp_path, change) -> None:
    base = dict(TINY, n_paths=2, epochs=1)
    ref = WORKLOAD.train(TrainConfig(**base), TrialContext(tmp_path / "ref"))
    other = WORKLOAD.train(TrainConfig(**{**base, **change}), TrialContext(tmp_path / "other"))
    assert other["val_loss"] != ref["val_loss"]


def test_cli_runs_and_writes_metrics(tmp_path) -> None:
    assert main("condor", [*TINY_FLAGS, "--output", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved["metrics"]) == set(WORKLOAD.metrics)
    assert saved["config"]["d_model"] == 8
    assert 0.0 <= saved["metrics"]["regime_acc"] <= 1.0


def test_cli_bad_value_is_one_line_error(tmp_path, capsys) -> None:
    flags = [*TINY_FLAGS, "--layers", "0", "--n-days", "100", "--output", str(tmp_path)]
    assert main("condor", flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    # Both problems are reported together, each naming the field and the value.
    assert err[0].startswith("error: ") and "layers=0" in err[0] and "n_days=100" in err[0]
    assert not (tmp_path / "metrics.json").exists()


class _StopAfterFirstCheckpoint(TrialContext):
    """A context whose stop request fires right after epoch 1 is saved (like SIGTERM)."""

    def checkpoint(self, state, *, epoch):
        super().checkpoint(state, epoch=epoch)
        self.request_stop("test: stop after epoch 1")


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path) -> None:
    from trainers.errors import StopRequested

    config = TrainConfig(**dict(TINY, n_paths=2, epochs=2))
    full = WORKLOAD.train(config, TrialContext(tmp_path / "full"))
    with pytest.raises(StopRequested):
        WORKLOAD.train(config, _StopAfterFirstCheckpoint(tmp_path / "cut"))
    resumed = WORKLOAD.train(config, TrialContext(tmp_path / "cut"))
    assert resumed == pytest.approx(full, rel=1e-9)
