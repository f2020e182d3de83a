"""The training runtime every workload shares; workloads import only from here.

* :mod:`trainers.runtime.config`: :class:`RuntimeConfig`, the shared run settings.
* :mod:`trainers.runtime.device`: threads, seeds, device and precision, RNG state, OOM.
* :mod:`trainers.runtime.optim`: optimizers and learning-rate schedules.
* :mod:`trainers.runtime.step`: :class:`StepRunner`, the step loop (usage in its docstring).
* :mod:`trainers.runtime.resume`: :func:`resume` and :func:`save_checkpoint` of a recipe, and
  :func:`step_boundary` / :func:`resume_part` for step checkpoints inside an epoch.
* :mod:`trainers.runtime.faults`: out-of-memory and NaN injection from the environment.
* :mod:`trainers.runtime.memory`: activation checkpointing and DataLoader settings.
"""

from __future__ import annotations

from trainers.runtime.config import (
    OptimizerName,
    PrecisionName,
    RuntimeConfig,
    SchedulerName,
)
from trainers.runtime.device import (
    Precision,
    autocast,
    choose_precision,
    configure_threads,
    free_memory,
    is_oom_error,
    release_host_memory,
    rng_state,
    seed_everything,
    select_device,
    set_rng_state,
)
from trainers.runtime.faults import INJECT_NAN_ENV, INJECT_OOM_ENV, INJECT_TRIALS_ENV
from trainers.runtime.memory import dataloader_kwargs, maybe_checkpoint
from trainers.runtime.optim import WarmupSchedule, build_optimizer, build_scheduler, param_groups
from trainers.runtime.resume import (
    PARTIAL,
    EpochPart,
    load_runner,
    resume,
    resume_part,
    resume_state,
    save_checkpoint,
    step_boundary,
)
from trainers.runtime.step import StepRunner

__all__ = [
    "INJECT_NAN_ENV",
    "INJECT_OOM_ENV",
    "INJECT_TRIALS_ENV",
    "OptimizerName",
    "Precision",
    "PrecisionName",
    "RuntimeConfig",
    "SchedulerName",
    "StepRunner",
    "WarmupSchedule",
    "autocast",
    "build_optimizer",
    "build_scheduler",
    "choose_precision",
    "configure_threads",
    "dataloader_kwargs",
    "free_memory",
    "is_oom_error",
    "release_host_memory",
    "maybe_checkpoint",
    "param_groups",
    "PARTIAL",
    "EpochPart",
    "load_runner",
    "resume",
    "resume_part",
    "resume_state",
    "step_boundary",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "select_device",
    "set_rng_state",
]
