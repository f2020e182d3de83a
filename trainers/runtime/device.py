"""Process-level set-up: threads, seeds, device, precision, RNG state, OOM recognition.

Public names are re-exported by :mod:`trainers.runtime`; import them from there.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainers.errors import UserError
from trainers.runtime.config import DEVICE_NAMES, DEVICE_PATTERN, PRECISIONS, _choices

# Environment variables read by the native thread pools of the numeric libraries when they
# start. Setting them only helps libraries that have not started yet (and child processes);
# torch's own pools are set through its API below, which works after import too.
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no sched_getaffinity
        return os.cpu_count() or 1


def configure_threads(n: int | None = None) -> None:
    """Limit every CPU thread pool of this process to ``n`` threads.

    ``n=None`` takes ``OMP_NUM_THREADS`` when the user set it, else the CPUs this process
    may run on. Call it at start-up: torch's inter-op pool can be sized only before its
    first parallel work (later calls keep the old inter-op size), and the environment
    variables reach only libraries that have not started their pools yet (polars reads
    ``POLARS_MAX_THREADS`` at import). Several worker processes on one host should each
    get ``cpus // workers``, or they oversubscribe the cores.
    """
    if n is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        n = int(env) if env.isdigit() and int(env) > 0 else _available_cpus()
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise UserError(f"threads={n!r} is not allowed; give an integer >= 1")
    for name in _THREAD_ENV:
        os.environ[name] = str(n)
    if "polars" not in sys.modules:
        os.environ["POLARS_MAX_THREADS"] = str(n)
    torch.set_num_threads(n)
    # Inter-op threads run independent ops of one graph in parallel; rarely useful for
    # training loops, and torch refuses a change once its pool has started.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(n)


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and every GPU)."""
    random.seed(seed)
    # numpy's legacy global seed must fit in 32 bits.
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device (lazily if not initialised)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(name: str = "auto") -> torch.device:
    """The device to train on: ``auto`` takes CUDA, then Apple MPS, then the CPU.

    An explicit device that this machine lacks is a :class:`UserError` (never a silent
    fall-back to the CPU, which would make a study hours slower without saying so).
    """
    if not isinstance(name, str) or not DEVICE_PATTERN.match(name):
        raise UserError(f"device={name!r} is not allowed; choose one of {_choices(DEVICE_NAMES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise UserError(
                "device='mps' but Apple MPS is not available here; use 'auto' or 'cpu'"
            )
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise UserError(
            f"device={name!r} but CUDA is not available (torch {torch.__version__}); "
            "use 'auto' or 'cpu'"
        )
    index = torch.cuda.current_device() if name == "cuda" else int(name.split(":")[1])
    count = torch.cuda.device_count()
    if index >= count:
        raise UserError(f"device={name!r} but this machine has {count} CUDA device(s)")
    return torch.device("cuda", index)


@dataclass(frozen=True)
class Precision:
    """How forward passes run: ``autocast_dtype`` None means plain fp32 (no autocast);
    ``use_scaler`` means fp16 gradients go through a GradScaler; ``tf32`` records whether
    fp32 matmuls were allowed to use TF32 tensor cores."""

    name: str
    autocast_dtype: torch.dtype | None
    use_scaler: bool
    tf32: bool = False


FP32 = Precision("fp32", None, False)
BF16 = Precision("bf16", torch.bfloat16, False)
FP16 = Precision("fp16", torch.float16, True)


def _cuda_bf16(device: torch.device) -> bool:
    # including_emulation=False: pre-Ampere GPUs emulate bf16 slowly; they should use fp16.
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def choose_precision(device: torch.device, requested: str = "auto") -> Precision:
    """The precision policy.

    ``auto``: bf16 autocast on CUDA devices with native bf16 (Ampere and newer), fp16
    autocast + GradScaler on older CUDA, fp32 on MPS and on the CPU. The CPU stays fp32
    because on CPUs without a bf16 unit (like the machines this was measured on) bf16
    autocast made a small LSTM about 7x slower than fp32, and the oneDNN LSTM kernel
    refused to run under it at all. An explicit ``bf16``/``fp16`` is honoured on any
    device that can run it (fp16 on the CPU also gets a GradScaler).

    Side effect: on CUDA devices of compute capability 8.0+ (Ampere and newer) fp32
    matmuls may use TF32 (``torch.set_float32_matmul_precision("high")``), except when
    ``fp32`` was asked for explicitly, which keeps full fp32 matmuls for exactness.
    """
    if requested not in PRECISIONS:
        raise UserError(
            f"precision={requested!r} is not allowed; choose one of {_choices(PRECISIONS)}"
        )
    if device.type != "cuda":
        if requested in ("auto", "fp32"):
            return FP32
        return BF16 if requested == "bf16" else FP16
    tf32 = requested != "fp32" and torch.cuda.get_device_capability(device) >= (8, 0)
    if tf32:
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
    if requested == "fp32":
        return FP32
    bf16_ok = _cuda_bf16(device)
    if requested == "bf16" and not bf16_ok:
        raise UserError(
            f"precision='bf16' but {torch.cuda.get_device_name(device)} has no native bf16; "
            "use 'fp16' or 'auto'"
        )
    chosen = BF16 if requested == "bf16" or (requested == "auto" and bf16_ok) else FP16
    return Precision(chosen.name, chosen.autocast_dtype, chosen.use_scaler, tf32)


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for this precision; a no-op context for fp32."""
    if precision.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision.autocast_dtype)


# -- RNG state for exact resume ---------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every global generator a training loop may draw from (shuffles, dropout, noise)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    # A checkpoint from a GPU run resumed on the CPU (or on fewer GPUs) cannot restore the
    # CUDA streams; the CPU-side sequence is still exact.
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


# -- out-of-memory recognition ----------------------------------------------------------

# Substrings of allocator failures that are not raised as torch.OutOfMemoryError:
# the CPU allocator ("DefaultCPUAllocator: can't allocate memory: you tried to allocate
# ..."), MPS ("MPS backend out of memory"), and cuBLAS/cuDNN workspace allocations.
_OOM_MARKERS = (
    "out of memory",
    "can't allocate memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
)


def is_oom_error(exc: BaseException) -> bool:
    """Whether ``exc`` means that an allocation failed (and a smaller batch may fit)."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(marker in text for marker in _OOM_MARKERS)
    return False


def free_memory(device: torch.device) -> None:
    """Return cached allocator blocks after an OOM so the retry starts from a clean heap."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def _libc_malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_host_memory() -> bool:
    """Give the pages of freed host allocations back to the operating system; returns
    whether it could.

    After a phase that made many mid-sized temporary arrays (the correlation graph's per-block
    edge arrays, the leakage guard's ranks), glibc's malloc keeps their freed pages in its
    heap instead of unmapping them: measured at the seed's size, a trial carried 1.8 GB of
    such freed memory into training. ``malloc_trim(0)`` returns them; nothing live moves.
    """
    import gc

    gc.collect()
    trim = _libc_malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
