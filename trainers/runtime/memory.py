"""What models and data loaders call to fit a run in memory, outside the step loop.

* :func:`maybe_checkpoint`: activation checkpointing of one model block.
* :func:`dataloader_kwargs`: DataLoader settings (no forked worker copies, pinned memory on
  CUDA only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def dataloader_kwargs(device: torch.device) -> dict[str, Any]:
    """Arguments for a ``torch.utils.data.DataLoader`` that fit this runtime.

    ``num_workers=0``: worker processes are forked, and a fork taken while polars (or any
    library with its own thread pool) holds a lock deadlocks the child; our data sets are
    in-memory tensors, so workers buy nothing. ``pin_memory`` only on CUDA.
    """
    return {"num_workers": 0, "pin_memory": device.type == "cuda"}


def maybe_checkpoint(fn: Callable[..., Any], *args: Any, enabled: bool) -> Any:
    """``fn(*args)``, recomputing its activations in backward when ``enabled`` (and grad is on).

    Models call this per block with ``enabled=runner.grad_checkpointing``: deep stacks
    trade ~30% more compute for activation memory that no longer grows with depth.
    """
    if enabled and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
