"""Shared training mechanics: every workload trains through a :class:`StepRunner`.

A trainer builds its model and data, then::

    configure_threads()                       # at start-up, before heavy work
    seed_everything(ctx.seed)
    runner = StepRunner(model, cfg, ctx=ctx, total_steps=epochs * batches, batch_size=bs)
    if (state := ctx.restore()) is not None:
        runner.load_state_dict(state["runtime"])
    for epoch in ...:
        for idx in batches:                   # idx: (batch,) sample indices of this batch
            x, y = runner.to_device(X[idx], Y[idx])
            runner.step(len(idx), lambda s: F.mse_loss(runner.model(x[s]), y[s]))
        with runner.eval_context():
            ...validate...
        ctx.checkpoint({"runtime": runner.state_dict()}, epoch=epoch + 1)
    runner.flush()                            # only matters when accumulation > 1

``loss_fn(slice)`` returns the MEAN loss over that slice of the batch; the runner decides
how the batch is cut into micro-batches (OOM retry halves them), scales each loss so the
gradient is the full-batch mean gradient, and owns device, precision, optimizer,
scheduler, clipping, gradient accumulation, divergence and stop checks.

Precision policy (``precision="auto"``): bf16 autocast on CUDA with native bf16, fp16
autocast + GradScaler on older CUDA, fp32 on MPS and CPU (bf16 autocast measured ~7x
slower than fp32 on CPUs without a bf16 unit; see :func:`choose_precision`).

Out-of-memory errors and NaN losses can be injected from the environment to exercise those
paths on any machine: see :mod:`trainers.runtime.faults`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import operator
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from trainers import attrs
from trainers.context import TrialContext
from trainers.errors import StopRequested, TrialFailed, TrialPruned
from trainers.runtime.config import RuntimeConfig
from trainers.runtime.device import (
    autocast,
    choose_precision,
    free_memory,
    is_oom_error,
    rng_state,
    select_device,
    set_rng_state,
)
from trainers.runtime.faults import FaultInjection
from trainers.runtime.optim import (
    build_optimizer,
    build_scheduler,
    param_groups,
)

log = logging.getLogger("trainers")


class StepRunner:
    """Owns model, optimizer, scheduler and GradScaler of one training run; runs its steps.

    Args:
        model: moved to the selected device; ``runner.model`` is what ``loss_fn`` should
            call (the ``torch.compile``-d module when ``cfg.compile``).
        total_steps: the number of ``step()`` calls the run will make (epochs x batches
            per epoch); the LR schedule spans ``ceil(total_steps / accumulation)``
            optimizer steps.
        batch_size: samples per ``step()`` call; the first micro-batch. The effective
            batch (samples per optimizer step) is ``batch_size * accumulation``.

    Nothing is global: a new runner starts from its own ``batch_size`` whatever an earlier
    runner in the same process went through.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: RuntimeConfig,
        *,
        ctx: TrialContext | None,
        total_steps: int,
        batch_size: int,
        checks_stop: bool = True,
    ) -> None:
        if not isinstance(cfg, RuntimeConfig):
            raise TypeError(f"cfg must be a RuntimeConfig, got {type(cfg).__name__}")
        total_steps = _positive_int("total_steps", total_steps)
        batch_size = _positive_int("batch_size", batch_size)
        self.cfg = cfg
        self.ctx = ctx
        # False: the recipe checks ``ctx.should_stop()`` itself, to checkpoint mid-epoch first.
        self.checks_stop = checks_stop
        self.device = select_device(cfg.device)
        self.precision = choose_precision(self.device, cfg.precision)
        self.module = model.to(self.device)
        self.model: torch.nn.Module = torch.compile(self.module) if cfg.compile else self.module
        self.optimizer = build_optimizer(
            param_groups(self.module, weight_decay=cfg.weight_decay), cfg
        )
        self._optimizer_flags = [
            {k: g[k] for k in ("fused", "foreach") if k in g} for g in self.optimizer.param_groups
        ]
        self.total_steps = total_steps
        self.scheduler = build_scheduler(
            self.optimizer, cfg, total_steps=math.ceil(total_steps / cfg.accumulation)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.use_scaler)
        self.batch_size = batch_size
        self.micro_batch = batch_size
        self.step_count = 0  # completed step() calls
        self.optimizer_steps = 0  # completed optimizer steps (step_count // accumulation)
        self.oom_retries: list[dict[str, int]] = []
        self.last_grad_norm: float | None = None
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self._window_calls = 0  # step() calls already accumulated in the open window
        # Gradients of the open window's earlier calls, set aside while the current call
        # computes its own, so an OOM can drop just this call's partial gradients.
        self._stash: list[torch.Tensor | None] | None = None
        self._faults = FaultInjection.from_env(ctx)
        self._record_setup()

    # -- facts ----------------------------------------------------------------------------
    def _log(self, message: str) -> None:
        if self.ctx is not None:
            self.ctx.log(message)
        else:
            log.info("%s", message)

    def _set_attr(self, key: str, value: Any) -> None:
        if self.ctx is not None:
            self.ctx.set_attr(key, value)

    def _record_setup(self) -> None:
        facts = {
            attrs.DEVICE: str(self.device),
            attrs.PRECISION: self.precision.name,
            attrs.OPTIMIZER_CLASS: type(self.optimizer).__name__,
            attrs.MICRO_BATCH: self.micro_batch,
            attrs.ACCUMULATION: self.cfg.accumulation,
            attrs.EFFECTIVE_BATCH: self.effective_batch,
        }
        for key, value in facts.items():
            self._set_attr(key, value)
        self._set_attr(attrs.OOM_RETRIES, list(self.oom_retries))
        self._set_attr(attrs.TF32, self.precision.tf32)
        self._set_attr(attrs.GRAD_CHECKPOINTING, self.cfg.grad_checkpointing)
        self._log("runtime: " + " ".join(f"{k}={v}" for k, v in facts.items()))
        for line in self._faults.describe():
            self._log(line)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def effective_batch(self) -> int:
        """Samples per optimizer step; OOM halving changes chunking, never this."""
        return self.batch_size * self.cfg.accumulation

    @property
    def grad_checkpointing(self) -> bool:
        return self.cfg.grad_checkpointing

    # -- one step -------------------------------------------------------------------------
    def step(self, n_samples: int, loss_fn: Callable[[slice], torch.Tensor]) -> float:
        """One ``step()`` call over ``n_samples`` samples; returns their mean loss.

        ``loss_fn(slice(lo, hi))`` is called under autocast for consecutive chunks of at
        most ``micro_batch`` samples and must return the MEAN loss of that chunk (a 0-dim
        tensor). Each chunk's backward uses ``loss * chunk_len / (n_samples * accumulation)``,
        so the gradient is the full-batch mean gradient, and with accumulation ``k`` each
        call weighs ``1/k`` whatever its size. On the ``k``-th call of a window the
        optimizer steps: unscale (fp16), clip to ``grad_clip``, optimizer step, scaler
        update, scheduler step, zero grads.

        Raises:
            StopRequested: ``ctx.should_stop()`` gave a reason (checked before starting).
            TrialPruned: a chunk loss (or, without a GradScaler, the gradient norm) is NaN
                or inf; the optimizer has not stepped on it and the grads are cleared.
            TrialFailed: out of memory and halving the micro-batch would go below
                ``cfg.min_batch``.

        Out of memory anywhere in the step (forward, backward, clipping, optimizer) is
        recovered here: the call's partial gradients are dropped, the window's earlier
        gradients (accumulation > 1) are put back as they were before this call, memory is
        freed, ``micro_batch`` is halved for the rest of the run, the retry is recorded, and
        this call is redone from its first chunk. Keeping the earlier calls' gradients aside
        costs one extra gradient-sized buffer during calls 2..k of a window. An OOM inside
        ``optimizer.step`` after it started changing parameters could not be undone; torch's
        optimizers allocate their state before touching any parameter, so this is not seen
        in practice.
        """
        if self.checks_stop and self.ctx is not None and (reason := self.ctx.should_stop()):
            raise StopRequested(reason)
        n_samples = _positive_int("n_samples", n_samples)
        step_no = self.step_count + 1
        while True:
            try:
                loss = self._attempt(n_samples, loss_fn, step_no)
            except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
                if not is_oom_error(exc):
                    raise
            else:
                self.step_count += 1
                return loss
            # Outside the except block: the exception, its traceback and the frames holding
            # the failed chunk's activations are released before memory is freed.
            self._recover_from_oom(step_no, n_samples)

    def _attempt(self, n: int, loss_fn: Callable[[slice], torch.Tensor], step_no: int) -> float:
        k = self.cfg.accumulation
        stepping = self._window_calls + 1 == k
        if self._window_calls > 0 and self._stash is None:
            self._stash = [p.grad for p in self._params]
            for p in self._params:
                p.grad = None
        chunk = min(self.micro_batch, n)
        # Sum of chunk_mean * chunk_len on the device: one host sync per call, not per chunk.
        acc_dtype = torch.float32 if self.device.type == "mps" else torch.float64
        total = torch.zeros((), dtype=acc_dtype, device=self.device)
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            with autocast(self.device, self.precision):
                loss = loss_fn(slice(lo, hi))
            if self._faults.exceeds(hi - lo):
                raise self._faults.out_of_memory(f"chunk of {hi - lo} samples at step {step_no}")
            if loss.ndim != 0:
                raise ValueError(
                    f"loss_fn must return a 0-dim mean loss, got shape {tuple(loss.shape)}"
                )
            if self._faults.nan_at == step_no:
                loss = loss + float("nan")
            weighted = loss * ((hi - lo) / (n * k))
            self.scaler.scale(weighted).backward()
            total += loss.detach().to(acc_dtype) * (hi - lo)
            del loss, weighted
        mean = float(total) / n
        if not math.isfinite(mean):
            self._abandon_window()
            raise TrialPruned(f"loss became {_nonfinite(mean)} at step {step_no}")
        self._merge_stash(keep=stepping)
        if not stepping:
            self._window_calls += 1
            return mean
        self._optimizer_step(step_no)
        return mean

    def flush(self) -> bool:
        """Step the optimizer on an incomplete accumulation window; False if none is open.

        For the end of training when ``total_steps`` is not a multiple of ``accumulation``
        (the schedule already counts that last, partial window as a step). The ``j < k``
        calls' gradients were each divided by ``k``; they are rescaled by ``k / j`` so the
        step uses the mean gradient of the calls that did run.
        """
        if self._window_calls == 0:
            return False
        scale = self.cfg.accumulation / self._window_calls
        for p in self._params:
            if p.grad is not None:
                p.grad.mul_(scale)
        self._optimizer_step(self.step_count)
        return True

    def _merge_stash(self, *, keep: bool) -> None:
        """Add the window's earlier gradients to this call's; ``keep`` them for an OOM retry."""
        if self._stash is None:
            return
        for p, old in zip(self._params, self._stash, strict=True):
            if old is None:
                continue
            if p.grad is None:
                p.grad = old.clone() if keep else old
            else:
                p.grad.add_(old)
        if not keep:
            self._stash = None

    def _optimizer_step(self, step_no: int) -> None:
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        grads = [p for p in self._params if p.grad is not None]
        if self.cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(grads, self.cfg.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in grads])
        self.last_grad_norm = float(norm)
        if not math.isfinite(self.last_grad_norm) and not self.scaler.is_enabled():
            # With a GradScaler an inf gradient is routine: the scaler skips the step and
            # lowers its scale. Without one it means the run has diverged.
            self._abandon_window()
            raise TrialPruned(
                f"gradient norm became {_nonfinite(self.last_grad_norm)} at step {step_no}"
            )
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        with warnings.catch_warnings():
            # A GradScaler that skipped an inf step makes torch warn that the scheduler
            # stepped before the optimizer; that is the intended behaviour here.
            warnings.filterwarnings("ignore", message=r".*lr_scheduler\.step\(\)")
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._stash = None
        self._window_calls = 0
        self.optimizer_steps += 1

    def _abandon_window(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._stash = None
        self._window_calls = 0

    def _recover_from_oom(self, step_no: int, n: int) -> None:
        before = min(self.micro_batch, n)
        # Put the gradients back as they were before this call: the window's earlier calls'
        # (accumulation > 1) or nothing at all.
        stash, self._stash = self._stash, None
        for i, p in enumerate(self._params):
            p.grad = stash[i] if stash is not None else None
        if self.scaler.is_enabled():
            # unscale_ may have run before the OOM; the retry must be allowed to call it again.
            self.scaler._per_optimizer_states.pop(id(self.optimizer), None)
        free_memory(self.device)
        self._halve(before, f"step {step_no}", step=step_no)

    def _halve(self, before: int, where: str, *, step: int) -> None:
        """Halve ``micro_batch`` after an out-of-memory error (or fail below the minimum)."""
        after = before // 2
        if after < self.cfg.min_batch:
            reason = (
                f"out of memory at micro-batch {before} ({where}); halving to {after} "
                f"is not allowed, minimum batch is {self.cfg.min_batch}"
            )
            self._log(reason)
            raise TrialFailed(reason)
        self.micro_batch = after
        self.oom_retries.append({"step": step, "batch_before": before, "batch_after": after,
                                 **({"phase": "eval"} if where.startswith("eval") else {})})
        self._set_attr(attrs.OOM_RETRIES, list(self.oom_retries))
        self._set_attr(attrs.MICRO_BATCH, after)
        self._log(f"out of memory at micro-batch {before} ({where}); retrying with {after}")

    def evaluate(self, n_samples: int, forward: Callable[[slice], Any]) -> list[Any]:
        """``forward`` over samples ``[0, n_samples)`` in chunks of at most ``micro_batch``,
        under :meth:`eval_context`; returns the chunks' results in order.

        Evaluation follows training's memory budget: an out-of-memory error halves
        ``micro_batch`` exactly as in :meth:`step` (the same minimum, the same record, and
        training goes on with the smaller size) and the pass is redone, so validation cannot
        run out of memory where training fits. ``forward`` should move its results off the
        device if the caller keeps them.
        """
        while True:
            chunk = min(self.micro_batch, n_samples)
            try:
                results = []
                with self.eval_context():
                    for lo in range(0, n_samples, max(chunk, 1)):
                        hi = min(lo + chunk, n_samples)
                        results.append(forward(slice(lo, hi)))
                        if self._faults.exceeds(hi - lo):
                            raise self._faults.out_of_memory(f"evaluation chunk of {hi - lo}")
                return results
            except Exception as exc:
                if not is_oom_error(exc):
                    raise
                results = []
            # Outside the except block, so the failed chunk's tensors are gone before freeing.
            free_memory(self.device)
            self._halve(chunk, f"evaluation after step {self.step_count}", step=self.step_count)

    # -- evaluation and data --------------------------------------------------------------
    def eval_context(self) -> contextlib.AbstractContextManager:
        """``torch.inference_mode`` + this run's autocast. Leaves train/eval mode alone."""
        return self._eval()

    @contextlib.contextmanager
    def _eval(self) -> Iterator[None]:
        # A generator context: nothing is entered before the ``with`` statement runs.
        with torch.inference_mode(), autocast(self.device, self.precision):
            yield

    def to_device(self, *tensors: Any, non_blocking: bool = True) -> Any:
        """Move tensors (also inside dicts, lists, tuples) to the run's device.

        On CUDA, CPU tensors are pinned first so the copy can overlap compute. Returns the
        one moved object for one argument, else a tuple; non-tensors pass through.
        """
        cuda = self.device.type == "cuda"

        def move(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                if cuda and x.device.type == "cpu":
                    if not x.is_pinned():
                        x = x.pin_memory()
                    return x.to(self.device, non_blocking=non_blocking)
                return x.to(self.device)
            if isinstance(x, dict):
                return {key: move(value) for key, value in x.items()}
            if isinstance(x, list | tuple) and not hasattr(x, "_fields"):
                return type(x)(move(value) for value in x)
            return x

        moved = tuple(move(t) for t in tensors)
        return moved[0] if len(moved) == 1 else moved

    # -- checkpoint state -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs, including the gradients of an open window."""
        pending = None
        if self._window_calls > 0:
            # Mid-call (an exception escaped step()) the window's gradients are the stash;
            # the call itself is redone after a resume, since step_count did not advance.
            grads = self._stash if self._stash is not None else [p.grad for p in self._params]
            pending = [None if g is None else g.detach().clone() for g in grads]
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step_count": self.step_count,
            "optimizer_steps": self.optimizer_steps,
            "micro_batch": self.micro_batch,
            "oom_retries": [dict(r) for r in self.oom_retries],
            "window_calls": self._window_calls,
            "pending_grads": pending,
            "rng": rng_state(),
            "runtime_config": dataclasses.asdict(self.cfg),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` was taken (bit-identical on the CPU).

        The micro-batch an OOM reduced stays reduced: a resumed run is the same run.
        """
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        # fused/foreach are properties of this machine, not of the saved run.
        for group, flags in zip(self.optimizer.param_groups, self._optimizer_flags, strict=True):
            group.update(flags)
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step_count = int(state["step_count"])
        self.optimizer_steps = int(state["optimizer_steps"])
        self.micro_batch = int(state["micro_batch"])
        self.oom_retries = [dict(r) for r in state["oom_retries"]]
        self._window_calls = int(state.get("window_calls", 0))
        self._stash = None
        pending = state.get("pending_grads")
        for i, p in enumerate(self._params):
            grad = pending[i] if pending is not None else None
            p.grad = None if grad is None else grad.to(device=p.device, dtype=p.dtype)
        set_rng_state(state["rng"])
        self._set_attr(attrs.MICRO_BATCH, self.micro_batch)
        if self.oom_retries:
            self._set_attr(attrs.OOM_RETRIES, list(self.oom_retries))


def _positive_int(name: str, value: Any) -> int:
    """``value`` as an int (numpy and 0-dim integer tensors included), at least 1."""
    try:
        number = operator.index(value)
    except TypeError:
        number = 0
    if isinstance(value, bool) or number < 1:
        raise ValueError(f"{name}={value!r}; need an integer >= 1")
    return number


def _nonfinite(value: float) -> str:
    return "nan" if math.isnan(value) else "inf"
