"""The training runtime every workload shares; workloads import only from here.

* :mod:`trainers.runtime.config`: :class:`RuntimeConfig`, the shared run settings.
* :mod:`trainers.runtime.device`: threads, seeds, device and precision, RNG state, OOM.
* :mod:`trainers.runtime.optim`: optimizers and learning-rate schedules.
* :mod:`trainers.runtime.step`: :class:`StepRunner`, the step loop (usage in its docstring).
"""

from __future__ import annotations

from trainers.runtime.config import RuntimeConfig, runtime_config_of
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
from trainers.runtime.optim import WarmupSchedule, build_optimizer, build_scheduler, param_groups
from trainers.runtime.step import (
    INJECT_NAN_ENV,
    INJECT_OOM_ENV,
    INJECT_TRIALS_ENV,
    StepRunner,
    dataloader_kwargs,
    maybe_checkpoint,
)

__all__ = [
    "INJECT_NAN_ENV",
    "INJECT_OOM_ENV",
    "INJECT_TRIALS_ENV",
    "Precision",
    "RuntimeConfig",
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
    "rng_state",
    "runtime_config_of",
    "seed_everything",
    "select_device",
    "set_rng_state",
]
