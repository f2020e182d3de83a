"""The lm workload: linear attention vs a quadratic reference, FAVOR+ features, the
orthogonality penalty, causality, learning on the default corpus, step accounting, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from trainers.cli import main
from trainers.context import TrialContext
from trainers.lm import WORKLOAD, TrainConfig
from trainers.lm.attention import (
    causal_linear_attention,
    orthogonal_gaussian,
    orthogonality_penalty,
    positive_features,
)
from trainers.lm.data import decode, encode
from trainers.lm.model import GPT

TINY = dict(corpus_max_bytes=300_000, d_model=64, layers=2, heads=4, block_size=64,
            batch_size=16, epochs=3, iters_per_epoch=50, lr=3e-3, warmup_steps=10,
            n_features=32, attn_chunk=16, device="cpu")
TINY_FLAGS = ["--d-model", "16", "--layers", "1", "--heads", "2", "--block-size", "16",
              "--batch-size", "4", "--epochs", "1", "--iters-per-epoch", "3",
              "--eval-windows", "4", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # The trainer sizes its thread pools from OMP_NUM_THREADS; tests share a small machine.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def quadratic_reference(qf, kf, v):
    """The same kernel attention written the O(T^2) way: full scores, causal mask."""
    scores = qf @ kf.transpose(-1, -2)  # (B, H, T, T)
    seq_len = scores.shape[-1]
    scores = scores.masked_fill(~torch.ones(seq_len, seq_len, dtype=torch.bool).tril(), 0.0)
    return (scores @ v) / scores.sum(dim=-1, keepdim=True)


def _features(dtype, seq_len=37):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, seq_len, 8, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(2, 3, seq_len, 5, generator=g, dtype=dtype)
    w = orthogonal_gaussian(16, 8, generator=g).to(dtype)
    return positive_features(q, w, is_query=True), positive_features(k, w, is_query=False), v


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_chunked_linear_attention_matches_quadratic_reference(chunk) -> None:
    qf, kf, v = _features(torch.float32)
    got = causal_linear_attention(qf, kf, v, chunk=chunk)
    assert got.shape == (2, 3, 37, 5)
    torch.testing.assert_close(got, quadratic_reference(qf, kf, v), rtol=1e-5, atol=1e-5)


def test_linear_attention_gradients_match_quadratic_reference() -> None:
    qf, kf, v = (t.double().requires_grad_() for t in _features(torch.float32, seq_len=24))
    quadratic_reference(qf, kf, v).pow(2).sum().backward()
    expected = [t.grad.clone() for t in (qf, kf, v)]
    for t in (qf, kf, v):
        t.grad = None
    causal_linear_attention(qf, kf, v, chunk=8, eps=0.0).pow(2).sum().backward()
    for t, want in zip((qf, kf, v), expected, strict=True):
        torch.testing.assert_close(t.grad, want, rtol=1e-9, atol=1e-9)


def test_orthogonal_features_approximate_softmax_attention() -> None:
    g = torch.Generator().manual_seed(1)
    d = 16
    w = orthogonal_gaussian(65536, d, generator=g)
    # Each block of d rows is mutually orthogonal.
    block = w[:d] / w[:d].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(d), atol=1e-5, rtol=0)
    q = torch.randn(1, 1, 1, d, generator=g) * 0.5
    k = torch.randn(1, 1, 12, d, generator=g) * 0.5
    weights = positive_features(q, w, is_query=True) @ positive_features(
        k, w, is_query=False).transpose(-1, -2)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    exact = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    assert float((weights - exact).abs().max()) < 0.02


def test_orthogonality_penalty_is_zero_only_for_orthonormal_rows() -> None:
    q, _ = torch.linalg.qr(torch.randn(12, 12))
    assert float(orthogonality_penalty(q)) == pytest.approx(0.0, abs=1e-10)
    # (2Q)(2Q)^T - I = 3 I: twelve squared 3s over twelve rows.
    assert float(orthogonality_penalty(2 * q)) == pytest.approx(9.0, rel=1e-5)
    # A small random init is far from orthonormal: every diagonal entry is ~ -1.
    assert float(orthogonality_penalty(torch.randn(12, 12) * 0.02)) > 0.9


@pytest.mark.parametrize("attention", ["softmax", "okadfa"])
def test_model_is_causal(attention) -> None:
    torch.manual_seed(0)
    model = GPT(vocab_size=256, block_size=24, d_model=16, layers=2, heads=2, d_ff=32,
                attention=attention, n_features=8, chunk=5, dropout=0.0).eval()
    idx = torch.randint(256, (2, 24))
    changed = idx.clone()
    changed[:, 15:] = torch.randint(256, (2, 9))
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :15], b[:, :15])
    assert not torch.allclose(a[:, 15:], b[:, 15:])


def test_byte_tokenizer_round_trips_any_text() -> None:
    text = "déjà vu → λx. x ✓\n"
    tokens = encode(text)
    assert tokens.dtype == torch.uint8 and len(tokens) == len(text.encode("utf-8"))
    assert decode(tokens) == text


@pytest.mark.parametrize("attention", ["softmax", "okadfa"])
def test_training_beats_uniform_and_unigram_baselines(tmp_path, attention) -> None:
    ctx = TrialContext(tmp_path)
    metrics = WORKLOAD.train(TrainConfig(**TINY, attention=attention), ctx)
    assert set(metrics) == set(WORKLOAD.metrics)
    assert ctx.attrs["uniform_val_loss"] == pytest.approx(math.log(256))
    assert ctx.attrs["corpus_source"].startswith("python stdlib")
    # Well below ln(256) = 5.55 and clearly below a context-free (unigram) byte model.
    assert metrics["val_loss"] < 0.5 * math.log(256), metrics
    assert metrics["val_loss"] < ctx.attrs["unigram_val_loss"] - 0.5, (metrics, ctx.attrs)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["val_loss"]))
    assert metrics["tokens_per_s"] > 0


def test_orthogonality_weight_pulls_projections_to_orthonormal(tmp_path) -> None:
    penalties = {}
    for weight in (0.0, 10.0):
        config = TrainConfig(**dict(TINY, epochs=1, iters_per_epoch=40), attention="okadfa",
                             ortho_weight=weight)
        WORKLOAD.train(config, TrialContext(tmp_path / str(weight)))
        state = torch.load(tmp_path / str(weight) / "checkpoint.pt", weights_only=False)
        model = GPT(vocab_size=256, block_size=64, d_model=64, layers=2, heads=4, d_ff=256,
                    attention="okadfa", n_features=32, chunk=16, dropout=0.0)
        model.load_state_dict(state["runner"]["model"])
        with torch.no_grad():
            penalties[weight] = float(model.orthogonality_penalty())
    assert penalties[10.0] < 0.75 * penalties[0.0], penalties


def test_max_steps_and_accumulation_count_optimizer_steps(tmp_path) -> None:
    config = TrainConfig(**dict(TINY, max_steps=7, iters_per_epoch=5, accumulation=2,
                                batch_size=4, eval_windows=4))
    WORKLOAD.train(config, TrialContext(tmp_path))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 2  # 5 + 2 steps
    assert state["runner"]["optimizer_steps"] == 7
    assert state["runner"]["step_count"] == 14  # two runtime calls per optimizer step
    assert state["train_tokens"] == 14 * 4 * 64


@pytest.mark.parametrize("change", [{"lr": 1e-3}, {"d_model": 32}, {"layers": 1},
                                    {"attention": "okadfa"}, {"block_size": 32}])
def test_every_swept_setting_changes_the_run(tmp_path, change) -> None:
    base = dict(TINY, epochs=1, iters_per_epoch=5, eval_windows=8)
    ref = WORKLOAD.train(TrainConfig(**base), TrialContext(tmp_path / "ref"))
    other = WORKLOAD.train(TrainConfig(**{**base, **change}), TrialContext(tmp_path / "other"))
    assert other["val_loss"] != ref["val_loss"]


def test_cli_trains_on_a_user_corpus(tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    out = tmp_path / "run"
    assert main("lm", [*TINY_FLAGS, "--corpus", str(corpus), "--output", str(out)]) == 0
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved["metrics"]) == set(WORKLOAD.metrics)
    assert saved["attrs"]["corpus_source"] == str(corpus)
    assert saved["attrs"]["corpus_bytes"] == corpus.stat().st_size


def test_cli_takes_betas_as_two_numbers(tmp_path, capsys) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abc " * 500)
    flags = [*TINY_FLAGS, "--corpus", str(corpus), "--betas", "0.8", "0.9"]
    assert main("lm", [*flags, "--output", str(tmp_path / "ok")]) == 0
    saved = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    assert saved["config"]["betas"] == [0.8, 0.9]
    assert main("lm", [*TINY_FLAGS, "--betas", "0.9", "--output", str(tmp_path / "bad")]) == 2
    assert "betas=(0.9,)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(["--heads", "3"], "d_model=16 is not allowed: must be a multiple of heads=3"),
     (["--corpus", "no/such/file.txt"], "corpus='no/such/file.txt' is not a readable file")],
)
def test_cli_user_errors_are_one_line(tmp_path, capsys, flags, expected) -> None:
    assert main("lm", [*TINY_FLAGS, *flags, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert expected in err[0]
    assert not (tmp_path / "metrics.json").exists()


class _StopAfterFirstCheckpoint(TrialContext):
    """A context whose stop request fires right after epoch 1 is saved (like SIGTERM)."""

    def checkpoint(self, state, *, epoch):
        super().checkpoint(state, epoch=epoch)
        self.request_stop("test: stop after epoch 1")


@pytest.mark.parametrize("attention", ["softmax", "okadfa"])
def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, attention) -> None:
    from trainers.errors import StopRequested

    # Dropout draws from the global RNG: equal results prove its state was restored too.
    config = TrainConfig(**dict(TINY, epochs=2, iters_per_epoch=5, eval_windows=8,
                                dropout=0.1, attention=attention))
    full = WORKLOAD.train(config, TrialContext(tmp_path / "full"))
    with pytest.raises(StopRequested):
        WORKLOAD.train(config, _StopAfterFirstCheckpoint(tmp_path / "cut"))
    resumed = WORKLOAD.train(config, TrialContext(tmp_path / "cut"))
    for key in ("val_loss", "train_loss"):
        assert resumed[key] == pytest.approx(full[key], rel=1e-9), key
