"""Fault paths of trainers.runtime: OOM retry with a halved batch, divergence, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainers.context import TrialContext
from trainers.errors import TrialFailed, TrialPruned, UserError
from trainers.runtime import (
    INJECT_NAN_ENV,
    INJECT_OOM_ENV,
    RuntimeConfig,
    StepRunner,
    is_oom_error,
    seed_everything,
)

# The exact text torch's CPU allocator raises when malloc fails (as a plain RuntimeError).
CPU_ALLOC_TEXT = (
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 1073741824 bytes. Error code 12 (Cannot allocate memory)"
)


@pytest.fixture(autouse=True)
def _quiet_machine(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(INJECT_OOM_ENV, raising=False)
    monkeypatch.delenv(INJECT_NAN_ENV, raising=False)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def regression(n: int, *, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g, dtype=dtype)  # (n, 4)
    return x, x @ torch.randn(4, 1, generator=g, dtype=dtype)  # (n, 4), (n, 1)


def mlp(*, seed: int = 0, dtype: torch.dtype = torch.float64, dropout: float = 0.0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Dropout(dropout), torch.nn.Linear(8, 1)
    ).to(dtype)


def params(runner: StepRunner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in runner.module.parameters()]


def mse(runner: StepRunner, x: torch.Tensor, y: torch.Tensor):
    return lambda s: F.mse_loss(runner.model(x[s]), y[s])


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((u - v).abs().max().item() for u, v in zip(a, b, strict=True))


# -- OOM ----------------------------------------------------------------------------------


def test_is_oom_error_classification() -> None:
    assert is_oom_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_oom_error(RuntimeError(CPU_ALLOC_TEXT))
    assert is_oom_error(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_oom_error(MemoryError())
    assert not is_oom_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_oom_error(ValueError("out of memory"))  # only allocator error types


def test_injected_oom_halves_twice_then_completes(tmp_path, monkeypatch) -> None:
    x, y = regression(512)
    plain = StepRunner(mlp(), RuntimeConfig(device="cpu"), ctx=None, total_steps=3, batch_size=512)
    for _ in range(3):
        plain.step(512, mse(plain, x, y))

    monkeypatch.setenv(INJECT_OOM_ENV, "128")
    ctx = TrialContext(tmp_path)
    cfg = RuntimeConfig(device="cpu")
    runner = StepRunner(mlp(), cfg, ctx=ctx, total_steps=3, batch_size=512)
    sizes: list[int] = []

    def loss_fn(s: slice) -> torch.Tensor:
        sizes.append(s.stop - s.start)
        return F.mse_loss(runner.model(x[s]), y[s])

    for _ in range(3):
        runner.step(512, loss_fn)
    want = [
        {"step": 1, "batch_before": 512, "batch_after": 256},
        {"step": 1, "batch_before": 256, "batch_after": 128},
    ]
    assert runner.micro_batch == 128 and ctx.attrs["micro_batch"] == 128
    assert runner.oom_retries == want and ctx.attrs["oom_retries"] == want
    # 512 (fails), 256 (fails), then 4 x 128 per step for all three steps
    assert sizes == [512, 256] + [128] * 12
    # Redone from scratch: the same training as a run that never ran out of memory
    # (float64; chunking changes only the summation order).
    assert max_diff(params(runner), params(plain)) < 1e-12


def test_oom_below_min_batch_fails_and_next_runner_starts_fresh(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(INJECT_OOM_ENV, "128")
    x, y = regression(512)
    ctx = TrialContext(tmp_path / "a")
    runner = StepRunner(
        mlp(), RuntimeConfig(device="cpu", min_batch=256), ctx=ctx, total_steps=1, batch_size=512
    )
    before = params(runner)
    with pytest.raises(TrialFailed) as err:
        runner.step(512, mse(runner, x, y))
    assert str(err.value) == (
        "out of memory at micro-batch 256 (step 1); halving to 128 is not allowed, "
        "minimum batch is 256"
    )
    assert ctx.attrs["oom_retries"] == [{"step": 1, "batch_before": 512, "batch_after": 256}]
    assert max_diff(params(runner), before) == 0.0
    assert all(p.grad is None for p in runner.module.parameters())

    # The next trial's runner knows nothing of the last one: it starts at its own batch.
    ctx2 = TrialContext(tmp_path / "b")
    fresh = StepRunner(mlp(), RuntimeConfig(device="cpu"), ctx=ctx2, total_steps=1, batch_size=512)
    assert fresh.micro_batch == ctx2.attrs["micro_batch"] == 512 and fresh.oom_retries == []
    fresh.step(512, mse(fresh, x, y))
    assert [r["batch_before"] for r in fresh.oom_retries] == [512, 256]


def test_oom_in_the_middle_of_an_accumulation_window_keeps_earlier_gradients(
    tmp_path, monkeypatch
) -> None:
    """Call 1 of the window fits; call 2 runs out of memory: call 1's gradient must survive,
    call 2's partial gradient must not be counted twice."""
    x, y = regression(356)
    batches = [(slice(0, 100), 100), (slice(100, 356), 256)]
    cfg = RuntimeConfig(device="cpu", accumulation=2)

    def run() -> StepRunner:
        runner = StepRunner(mlp(), cfg, ctx=TrialContext(tmp_path), total_steps=2, batch_size=256)
        for rows, n in batches:
            xb, yb = x[rows], y[rows]
            runner.step(n, mse(runner, xb, yb))
        return runner

    plain = run()
    monkeypatch.setenv(INJECT_OOM_ENV, "128")
    retried = run()
    assert retried.oom_retries == [{"step": 2, "batch_before": 256, "batch_after": 128}]
    assert retried.optimizer_steps == 1
    assert max_diff(params(retried), params(plain)) < 1e-12


def test_cpu_allocator_error_text_and_memory_error_are_retried(tmp_path) -> None:
    x, y = regression(64)
    runner = StepRunner(mlp(), RuntimeConfig(device="cpu"), ctx=None, total_steps=2, batch_size=64)

    def cpu_oom(s: slice) -> torch.Tensor:
        if s.stop - s.start > 32:
            raise RuntimeError(CPU_ALLOC_TEXT)
        return F.mse_loss(runner.model(x[s]), y[s])

    def py_oom(s: slice) -> torch.Tensor:
        if s.stop - s.start > 16:
            raise MemoryError
        return F.mse_loss(runner.model(x[s]), y[s])

    runner.step(64, cpu_oom)
    runner.step(64, py_oom)
    assert [(r["step"], r["batch_after"]) for r in runner.oom_retries] == [(1, 32), (2, 16)]


def test_other_errors_propagate_without_retry(tmp_path) -> None:
    runner = StepRunner(mlp(), RuntimeConfig(device="cpu"), ctx=None, total_steps=1, batch_size=8)

    def broken(s: slice) -> torch.Tensor:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x3 and 4x8)")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        runner.step(8, broken)
    assert runner.oom_retries == [] and runner.micro_batch == 8


def test_oom_after_unscale_in_fp16_is_retried(tmp_path, monkeypatch) -> None:
    """An OOM while clipping (after GradScaler.unscale_) must not leave the scaler
    believing this step was already unscaled."""
    x, y = regression(64, dtype=torch.float32)
    cfg = RuntimeConfig(device="cpu", precision="fp16")
    runner = StepRunner(mlp(dtype=torch.float32), cfg, ctx=None, total_steps=2, batch_size=64)
    real_clip = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def clip_once_oom(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("out of memory while clipping")
        return real_clip(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_once_oom)
    before = params(runner)
    runner.step(64, lambda s: F.mse_loss(runner.model(x[s]).float(), y[s]))
    assert runner.oom_retries == [{"step": 1, "batch_before": 64, "batch_after": 32}]
    assert runner.optimizer_steps == 1 and max_diff(params(runner), before) > 0


def test_bad_injection_value_is_a_user_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(INJECT_OOM_ENV, "lots")
    with pytest.raises(UserError, match="HPO_INJECT_OOM_ABOVE_BATCH='lots'"):
        StepRunner(mlp(), RuntimeConfig(device="cpu"), ctx=None, total_steps=1, batch_size=8)


# -- divergence ---------------------------------------------------------------------------


@pytest.mark.parametrize("accumulation", [1, 2])
def test_injected_nan_prunes_without_touching_parameters(
    tmp_path, monkeypatch, accumulation: int
) -> None:
    monkeypatch.setenv(INJECT_NAN_ENV, "4")
    x, y = regression(16)
    cfg = RuntimeConfig(device="cpu", accumulation=accumulation)
    runner = StepRunner(mlp(), cfg, ctx=TrialContext(tmp_path), total_steps=8, batch_size=16)
    for _ in range(3):
        runner.step(16, mse(runner, x, y))
    before = params(runner)
    with pytest.raises(TrialPruned, match=r"^loss became nan at step 4$"):
        runner.step(16, mse(runner, x, y))
    assert max_diff(params(runner), before) == 0.0
    assert all(p.grad is None for p in runner.module.parameters())
    assert runner.step_count == 3


def test_inf_loss_from_the_model_prunes(tmp_path) -> None:
    runner = StepRunner(mlp(), RuntimeConfig(device="cpu"), ctx=None, total_steps=1, batch_size=4)
    before = params(runner)
    with pytest.raises(TrialPruned, match="loss became inf at step 1"):
        runner.step(4, lambda s: runner.model(torch.zeros(1, 4, dtype=torch.float64)).sum() / 0.0)
    assert max_diff(params(runner), before) == 0.0


# -- exact resume -------------------------------------------------------------------------

N, BATCH, BATCHES = 160, 32, 5


def _train(ctx: TrialContext, cfg: RuntimeConfig, *, epochs: int, stop_after: int | None):
    """A miniature trainer: global-RNG shuffles, numpy label noise and dropout, so every
    generator the checkpoint restores is exercised."""
    x, y = regression(N, dtype=torch.float32)
    seed_everything(123)
    model = mlp(seed=int(torch.randint(0, 1000, ())), dtype=torch.float32, dropout=0.2)
    runner = StepRunner(model, cfg, ctx=ctx, total_steps=epochs * BATCHES, batch_size=BATCH)
    start = 0
    if (state := ctx.restore()) is not None:
        runner.load_state_dict(state["runtime"])
        start = state["epoch"]
    for epoch in range(start, stop_after if stop_after is not None else epochs):
        perm = torch.randperm(N)
        for b in range(BATCHES):
            idx = perm[b * BATCH : (b + 1) * BATCH]
            noise = torch.from_numpy(np.random.normal(0.0, 0.01, (BATCH, 1)).astype(np.float32))
            xb, yb = x[idx], y[idx] + noise
            runner.step(BATCH, mse(runner, xb, yb))
        ctx.checkpoint({"runtime": runner.state_dict()}, epoch=epoch + 1)
    return runner


@pytest.mark.parametrize(
    "cfg",
    [
        RuntimeConfig(device="cpu", lr=1e-2, warmup_steps=3),
        # 5 calls per epoch with accumulation 3: a window is open at each checkpoint
        RuntimeConfig(device="cpu", optimizer="adabelief", accumulation=3, weight_decay=0.01),
    ],
    ids=["adamw", "adabelief-accumulation-3"],
)
def test_resume_is_bit_identical(tmp_path, cfg: RuntimeConfig) -> None:
    straight = _train(TrialContext(tmp_path / "straight"), cfg, epochs=3, stop_after=None)
    _train(TrialContext(tmp_path / "split"), cfg, epochs=3, stop_after=2)
    resumed = _train(TrialContext(tmp_path / "split"), cfg, epochs=3, stop_after=None)
    assert resumed.step_count == straight.step_count == 15
    assert all(torch.equal(a, b) for a, b in zip(params(resumed), params(straight), strict=True))
    assert resumed.lr == straight.lr
    assert resumed.optimizer_steps == straight.optimizer_steps


def test_resume_keeps_the_reduced_micro_batch(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(INJECT_OOM_ENV, "16")
    x, y = regression(32)
    runner = StepRunner(mlp(), RuntimeConfig(device="cpu"), ctx=None, total_steps=2, batch_size=32)
    runner.step(32, mse(runner, x, y))
    state = runner.state_dict()
    monkeypatch.delenv(INJECT_OOM_ENV)
    ctx = TrialContext(tmp_path)
    again = StepRunner(mlp(), RuntimeConfig(device="cpu"), ctx=ctx, total_steps=2, batch_size=32)
    again.load_state_dict(state)
    assert again.micro_batch == ctx.attrs["micro_batch"] == 16
    assert again.oom_retries == [{"step": 1, "batch_before": 32, "batch_after": 16}]
    assert again.step_count == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_oom_is_retried(tmp_path) -> None:
    """A genuine allocator failure on the GPU takes the same path as the injected one."""
    x, y = regression(64, dtype=torch.float32)
    ctx = TrialContext(tmp_path)
    runner = StepRunner(
        mlp(dtype=torch.float32), RuntimeConfig(), ctx=ctx, total_steps=1, batch_size=64
    )
    xb, yb = runner.to_device(x, y)

    def loss_fn(s: slice) -> torch.Tensor:
        if s.stop - s.start > 32:
            torch.empty(2**50, dtype=torch.uint8, device=runner.device)  # 1 PiB: never fits
        return F.mse_loss(runner.model(xb[s]).float(), yb[s])

    runner.step(64, loss_fn)
    assert ctx.attrs["oom_retries"] == [{"step": 1, "batch_before": 64, "batch_after": 32}]
