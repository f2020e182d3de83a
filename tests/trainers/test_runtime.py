"""Tests for trainers.runtime: config, device/precision policy, optimizers, schedules, steps.

OOM retry, divergence and exact resume live in test_runtime_faults.py. Every model here is
a tiny MLP on a synthetic regression so the whole file runs in a few seconds on one core.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainers.config import from_mapping
from trainers.context import TrialContext
from trainers.errors import StopRequested, UserError
from trainers.runtime import (
    INJECT_NAN_ENV,
    INJECT_OOM_ENV,
    RuntimeConfig,
    StepRunner,
    build_optimizer,
    build_scheduler,
    choose_precision,
    configure_threads,
    dataloader_kwargs,
    maybe_checkpoint,
    seed_everything,
    select_device,
)

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _quiet_machine(monkeypatch: pytest.MonkeyPatch):
    """One thread (the machine is shared) and no fault injection leaking in from outside."""
    monkeypatch.delenv(INJECT_OOM_ENV, raising=False)
    monkeypatch.delenv(INJECT_NAN_ENV, raising=False)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def regression(n: int = 256, *, seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=dtype)  # (n, 4)
    w = torch.randn(4, 1, generator=g, dtype=dtype)
    return x, x @ w  # (n, 4), (n, 1)


def mlp(*, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).to(
        dtype
    )


def cpu_cfg(**overrides) -> RuntimeConfig:
    return RuntimeConfig(**{"device": "cpu", **overrides})


# -- RuntimeConfig ----------------------------------------------------------------------


def test_config_stores_betas_list_as_tuple() -> None:
    assert RuntimeConfig(betas=[0.8, 0.95]).betas == (0.8, 0.95)


def test_config_reports_every_problem_with_field_value_and_allowed() -> None:
    with pytest.raises(UserError) as err:
        RuntimeConfig(optimizer="sgd", lr=-1.0, accumulation=0, precision="fp8", device="tpu")
    text = str(err.value)
    assert "optimizer='sgd' (allowed: 'adamw', 'adabelief')" in text
    assert "lr=-1.0 (allowed: a finite number > 0)" in text
    assert "accumulation=0 (allowed: an integer >= 1)" in text
    assert "precision='fp8' (allowed: 'auto', 'fp32', 'bf16', 'fp16')" in text
    assert "device='tpu' (allowed: 'auto', 'cpu', 'cuda', 'cuda:N', 'mps')" in text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("accumulation", True),  # a bool is not an integer here
        ("warmup_steps", 1.5),
        ("min_lr_ratio", 1.5),
        ("betas", (0.9, 1.0)),
        ("grad_clip", float("nan")),
        ("min_batch", 0),
        ("compile", "yes"),
        ("scheduler", "linear"),
    ],
)
def test_config_rejects_bad_value(field: str, value: object) -> None:
    with pytest.raises(UserError, match=rf"{field}="):
        RuntimeConfig(**{field: value})


def test_config_from_mapping_rejects_unknown_key() -> None:
    assert from_mapping(RuntimeConfig, {"lr": 0.1, "betas": [0.8, 0.9]}).betas == (0.8, 0.9)
    with pytest.raises(UserError, match=r"runtime: unknown key 'learning_rate'; allowed: .*lr"):
        from_mapping(RuntimeConfig, {"learning_rate": 0.1}, where="runtime")


# -- device, precision, threads, seeds --------------------------------------------------


def test_choose_precision_on_cpu() -> None:
    auto = choose_precision(CPU, "auto")
    assert (auto.name, auto.autocast_dtype, auto.use_scaler) == ("fp32", None, False)
    assert choose_precision(CPU).name == "fp32"
    assert choose_precision(CPU, "bf16").autocast_dtype is torch.bfloat16
    fp16 = choose_precision(CPU, "fp16")
    assert (fp16.autocast_dtype, fp16.use_scaler) == (torch.float16, True)
    with pytest.raises(UserError, match=r"precision='fp8'.*'auto', 'fp32', 'bf16', 'fp16'"):
        choose_precision(CPU, "fp8")


def test_select_device_names() -> None:
    assert select_device("cpu") == CPU
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert select_device("auto") == CPU
        assert select_device() == CPU
    with pytest.raises(UserError, match=r"device='tpu'.*'auto', 'cpu', 'cuda', 'cuda:N', 'mps'"):
        select_device("tpu")
    with pytest.raises(UserError, match="device='cuda:x'"):
        select_device("cuda:x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_select_device_cuda_missing_is_user_error() -> None:
    with pytest.raises(UserError, match="device='cuda:1' but CUDA is not available"):
        select_device("cuda:1")


def test_seed_everything_repeats_every_generator() -> None:
    def draws() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    seed_everything(7)
    first = draws()
    seed_everything(7)
    assert draws() == first
    seed_everything(8)
    assert draws() != first


def test_configure_threads_sets_torch_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(name, "2")  # restored by monkeypatch after the test
    monkeypatch.setenv("NUMEXPR_NUM_THREADS", "2")
    monkeypatch.setenv("POLARS_MAX_THREADS", "2")
    configure_threads(1)
    assert torch.get_num_threads() == 1
    assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    configure_threads()  # None: the user's OMP_NUM_THREADS wins
    assert torch.get_num_threads() == 1
    with pytest.raises(UserError, match="threads=0"):
        configure_threads(0)


def test_dataloader_kwargs_use_no_worker_processes() -> None:
    assert dataloader_kwargs(CPU) == {"num_workers": 0, "pin_memory": False}


# -- optimizers and schedules -----------------------------------------------------------


@pytest.mark.parametrize(("name", "cls"), [("adamw", "AdamW"), ("adabelief", "AdaBelief")])
def test_optimizer_trains_and_is_recorded(
    name: str, cls: str, tmp_path, capfd: pytest.CaptureFixture[str]
) -> None:
    x, y = regression()
    ctx = TrialContext(tmp_path)
    cfg = cpu_cfg(optimizer=name, lr=1e-2, weight_decay=1e-4, warmup_steps=5)
    runner = StepRunner(mlp(), cfg, ctx=ctx, total_steps=120, batch_size=64)
    assert capfd.readouterr().out == ""  # AdaBelief's banner and prints are silenced

    def full_loss() -> float:
        with runner.eval_context():
            return F.mse_loss(runner.model(x), y).item()

    start = full_loss()
    gen = torch.Generator().manual_seed(1)
    for _ in range(120):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        xb, yb = runner.to_device(x[idx], y[idx])
        runner.step(64, lambda s, xb=xb, yb=yb: F.mse_loss(runner.model(xb[s]), yb[s]))
    assert full_loss() < 0.2 * start
    assert type(runner.optimizer).__name__ == cls
    assert ctx.attrs["optimizer_class"] == cls
    assert ctx.attrs["device"] == "cpu" and ctx.attrs["precision"] == "fp32"
    assert (ctx.attrs["micro_batch"], ctx.attrs["accumulation"]) == (64, 1)
    assert ctx.attrs["effective_batch"] == 64
    assert ctx.attrs["oom_retries"] == []
    # decoupled decay reaches the optimizer for matrices only; biases are not decayed
    decays = sorted(g["weight_decay"] for g in runner.optimizer.param_groups)
    assert decays == [0.0, 1e-4]
    assert runner.step_count == runner.optimizer_steps == 120


def test_adabelief_is_built_with_decoupled_decay_and_no_rectification() -> None:
    opt = build_optimizer(mlp().parameters(), cpu_cfg(optimizer="adabelief", weight_decay=0.1))
    assert (opt.weight_decouple, opt.rectify) == (True, False)
    assert opt.param_groups[0]["weight_decay"] == 0.1
    assert opt.param_groups[0]["eps"] == 1e-8


def test_cosine_schedule_values() -> None:
    cfg = cpu_cfg(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, total_steps=20)
    lrs = []
    for _ in range(25):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[4:20], lrs[5:20], strict=False))
    assert lrs[19] == pytest.approx(0.1)  # last planned step runs at min_lr_ratio * lr
    assert lrs[20:] == pytest.approx([0.1] * 5)  # and stays there past the plan
    # step 11 is 7 of the 15 decay steps in: cosine between 1 and 0.1
    assert lrs[11] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 15)))


def test_constant_schedule_is_flat_after_warmup() -> None:
    cfg = cpu_cfg(lr=0.5, scheduler="constant", warmup_steps=2)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, total_steps=10)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])


def test_schedule_spans_optimizer_steps_under_accumulation(tmp_path) -> None:
    x, y = regression(40)
    cfg = cpu_cfg(lr=1e-2, accumulation=2, min_lr_ratio=0.1)
    runner = StepRunner(mlp(), cfg, ctx=TrialContext(tmp_path), total_steps=10, batch_size=4)
    assert runner.lr == pytest.approx(1e-2)
    for i in range(10):
        xb, yb = x[4 * i : 4 * i + 4], y[4 * i : 4 * i + 4]
        runner.step(4, lambda s, xb=xb, yb=yb: F.mse_loss(runner.model(xb[s]), yb[s]))
    # 10 calls = 5 optimizer steps = the whole schedule: the LR has reached its floor
    assert (runner.step_count, runner.optimizer_steps) == (10, 5)
    assert runner.lr == pytest.approx(1e-3)
    assert runner.ctx.attrs["effective_batch"] == 8


# -- gradient arithmetic ----------------------------------------------------------------


def _capture_grads(runner: StepRunner) -> list[list[torch.Tensor]]:
    """Grads as the optimizer sees them (after clipping), once per optimizer step."""
    seen: list[list[torch.Tensor]] = []

    def hook(opt, args, kwargs) -> None:
        seen.append([p.grad.detach().clone() for p in runner.module.parameters()])

    runner.optimizer.register_step_pre_hook(hook)
    return seen


def _full_batch_grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    model.zero_grad(set_to_none=True)
    F.mse_loss(model(x), y).backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def _assert_close(got: list[torch.Tensor], want: list[torch.Tensor], rel: float) -> None:
    # Relative to the largest reference entry: float64 chunked sums differ from the
    # one-shot sum only by rounding (~1e-16 relative); 1e-10 leaves room for the order.
    scale = max(w.abs().max().item() for w in want)
    worst = max((g - w).abs().max().item() for g, w in zip(got, want, strict=True))
    assert worst <= rel * scale, (worst, scale)


def test_micro_batches_give_the_full_batch_gradient(tmp_path) -> None:
    x, y = regression(10, dtype=torch.float64)
    reference = _full_batch_grads(mlp(dtype=torch.float64), x, y)
    cfg = cpu_cfg(grad_clip=0.0)
    runner = StepRunner(mlp(dtype=torch.float64), cfg, ctx=None, total_steps=1, batch_size=10)
    runner.micro_batch = 3  # chunks 3, 3, 3, 1
    seen = _capture_grads(runner)
    calls: list[slice] = []

    def loss_fn(s: slice) -> torch.Tensor:
        calls.append(s)
        return F.mse_loss(runner.model(x[s]), y[s])

    loss = runner.step(10, loss_fn)
    assert [(s.start, s.stop) for s in calls] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    _assert_close(seen[0], reference, 1e-10)
    with torch.no_grad():
        assert loss == pytest.approx(F.mse_loss(mlp(dtype=torch.float64)(x), y).item(), rel=1e-12)


def test_accumulation_gives_the_full_batch_gradient(tmp_path) -> None:
    x, y = regression(12, dtype=torch.float64)
    reference = _full_batch_grads(mlp(dtype=torch.float64), x, y)
    cfg = cpu_cfg(grad_clip=0.0, accumulation=3)
    runner = StepRunner(mlp(dtype=torch.float64), cfg, ctx=None, total_steps=3, batch_size=4)
    runner.micro_batch = 3  # each 4-sample call is cut into 3 + 1
    seen = _capture_grads(runner)
    before = [p.detach().clone() for p in runner.module.parameters()]
    for i in range(3):
        xb, yb = x[4 * i : 4 * i + 4], y[4 * i : 4 * i + 4]
        runner.step(4, lambda s, xb=xb, yb=yb: F.mse_loss(runner.model(xb[s]), yb[s]))
        if i < 2:  # the window is still open: parameters have not moved
            now = runner.module.parameters()
            assert all(torch.equal(a, b) for a, b in zip(before, now, strict=True))
    assert len(seen) == 1 and runner.optimizer_steps == 1
    _assert_close(seen[0], reference, 1e-10)
    assert all(p.grad is None for p in runner.module.parameters())  # zeroed after the step


def test_flush_steps_a_partial_window_with_its_mean_gradient() -> None:
    x, y = regression(8, dtype=torch.float64)
    reference = _full_batch_grads(mlp(dtype=torch.float64), x, y)
    cfg = cpu_cfg(grad_clip=0.0, accumulation=3)
    runner = StepRunner(mlp(dtype=torch.float64), cfg, ctx=None, total_steps=2, batch_size=4)
    seen = _capture_grads(runner)
    assert runner.flush() is False  # nothing accumulated yet
    for i in range(2):  # two of three calls, then the data ran out
        xb, yb = x[4 * i : 4 * i + 4], y[4 * i : 4 * i + 4]
        runner.step(np.int64(4), lambda s, xb=xb, yb=yb: F.mse_loss(runner.model(xb[s]), yb[s]))
    assert runner.optimizer_steps == 0
    assert runner.flush() is True
    assert runner.optimizer_steps == 1 and runner.flush() is False
    _assert_close(seen[0], reference, 1e-10)


def test_compile_wraps_the_model_but_checkpoints_the_plain_module(monkeypatch) -> None:
    compiled: list[torch.nn.Module] = []

    def fake_compile(module: torch.nn.Module) -> torch.nn.Module:
        compiled.append(module)
        return torch.nn.Sequential(module)  # stands in for the OptimizedModule wrapper

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = mlp()
    runner = StepRunner(model, cpu_cfg(compile=True), ctx=None, total_steps=1, batch_size=4)
    assert compiled == [model] and runner.module is model and runner.model is not model
    assert set(runner.state_dict()["model"]) == set(model.state_dict())
    plain = StepRunner(mlp(), cpu_cfg(), ctx=None, total_steps=1, batch_size=4)
    assert plain.model is plain.module and len(compiled) == 1


def test_runner_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="batch_size=0"):
        StepRunner(mlp(), cpu_cfg(), ctx=None, total_steps=1, batch_size=0)
    with pytest.raises(ValueError, match="total_steps=2.5"):
        StepRunner(mlp(), cpu_cfg(), ctx=None, total_steps=2.5, batch_size=4)


def test_gradients_are_clipped_to_grad_clip(tmp_path) -> None:
    x, y = regression(32)
    runner = StepRunner(mlp(), cpu_cfg(grad_clip=1e-3), ctx=None, total_steps=1, batch_size=32)
    seen = _capture_grads(runner)
    runner.step(32, lambda s: F.mse_loss(runner.model(x[s]), y[s]))
    clipped = torch.linalg.vector_norm(torch.stack([g.norm() for g in seen[0]])).item()
    assert runner.last_grad_norm > 1e-2  # the norm before clipping
    assert clipped == pytest.approx(1e-3, rel=1e-4)


# -- stop, eval, data, checkpointing helper ---------------------------------------------


def test_stop_request_raises_before_the_step(tmp_path) -> None:
    ctx = TrialContext(tmp_path)
    runner = StepRunner(mlp(), cpu_cfg(), ctx=ctx, total_steps=1, batch_size=4)
    ctx.request_stop("SIGTERM received")

    def loss_fn(s: slice) -> torch.Tensor:
        raise AssertionError("must not run after a stop request")

    with pytest.raises(StopRequested, match="SIGTERM received"):
        runner.step(4, loss_fn)
    assert runner.step_count == 0


def test_eval_context_and_to_device(tmp_path) -> None:
    runner = StepRunner(mlp(), cpu_cfg(), ctx=None, total_steps=1, batch_size=4)
    pending = runner.eval_context()
    assert not torch.is_inference_mode_enabled()  # nothing happens before `with`
    with pending:
        assert torch.is_inference_mode_enabled()
        out = runner.model(torch.zeros(2, 4))
    assert not torch.is_inference_mode_enabled() and out.is_inference()
    assert runner.model.training  # train/eval mode is the trainer's business
    a, b = torch.ones(2), torch.zeros(3)
    assert runner.to_device(a) is a  # one argument -> the tensor itself, not a tuple
    moved = runner.to_device(a, {"b": b, "k": [a, None]}, 5)
    assert moved[0] is a and moved[1]["b"] is b and moved[1]["k"][1] is None and moved[2] == 5


def test_maybe_checkpoint_gives_the_same_gradient() -> None:
    layer = mlp(dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64)
    grads = []
    for enabled in (False, True):
        layer.zero_grad(set_to_none=True)
        maybe_checkpoint(layer, x, enabled=enabled).sum().backward()
        grads.append([p.grad.clone() for p in layer.parameters()])
    assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(*grads, strict=True))


def test_fp16_with_grad_scaler_trains_on_cpu(tmp_path) -> None:
    x, y = regression(64)
    cfg = cpu_cfg(precision="fp16", lr=1e-2)
    ctx = TrialContext(tmp_path)
    runner = StepRunner(mlp(), cfg, ctx=ctx, total_steps=40, batch_size=64)
    assert runner.scaler.is_enabled() and ctx.attrs["precision"] == "fp16"
    losses = [
        runner.step(64, lambda s: F.mse_loss(runner.model(x[s]).float(), y[s])) for _ in range(40)
    ]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.5 * losses[0]


# -- GPU only -----------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_cuda_auto_precision_and_pinned_transfer(tmp_path) -> None:
    ctx = TrialContext(tmp_path)
    runner = StepRunner(mlp(), RuntimeConfig(), ctx=ctx, total_steps=2, batch_size=8)
    assert runner.device.type == "cuda"
    want = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    assert runner.precision.name == ctx.attrs["precision"] == want
    x, y = runner.to_device(*regression(8))
    assert x.is_cuda and y.is_cuda
    with runner.eval_context():
        assert runner.model(x).dtype == runner.precision.autocast_dtype
    assert math.isfinite(runner.step(8, lambda s: F.mse_loss(runner.model(x[s]).float(), y[s])))
    if runner.precision.name == "bf16":
        assert isinstance(runner.optimizer, torch.optim.AdamW)
        assert runner.optimizer.param_groups[0]["fused"] is True


RETENTION_SCRIPT = """
import json, numpy as np
from pathlib import Path
from trainers.runtime.device import release_host_memory

def anon():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

# Freeing a large mapped block raises glibc's mmap threshold to its size, so the 8 MB arrays
# that follow come from the heap, as a graph build's per-block arrays do; the smaller arrays
# made between them stay alive, so the freed blocks are holes the heap cannot shrink past.
np.ones(24 << 20, dtype=np.uint8)
blocks, pins = [], []
for _ in range(40):  # 320 MB touched
    blocks.append(np.ones(8 << 20, dtype=np.uint8))
    pins.append(np.ones(256 << 10, dtype=np.uint8))
del blocks
held = anon()
done = release_host_memory()
print(json.dumps({"done": done, "released": held - anon(), "pins": len(pins)}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_release_host_memory_returns_the_pages_of_freed_mid_sized_arrays() -> None:
    """In a fresh interpreter, so the heap's layout is the script's own (in a long test run,
    earlier tests' free holes change where the arrays land)."""
    import json
    import subprocess
    import sys

    from trainers.runtime.device import _libc_malloc_trim

    if _libc_malloc_trim() is None:
        pytest.skip("the C library has no malloc_trim (not glibc)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", RETENTION_SCRIPT], env=env, check=True,
                          capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["done"] is True
    # (a no-op release would leave all 320 MB held)
    assert result["released"] > 200 << 20, f"only {result['released'] >> 20} MB went back"
