"""numpy (memory-mapped) -> torch without needless copies.

CPU: ``torch.from_numpy`` shares the mapped pages. CUDA: the host side of a copy must be
pinned for the DMA engine to run it asynchronously, and pinning the mapped file itself is
not possible, so rows go through two pinned staging buffers in turn: while the GPU pulls
one, the CPU fills the other from the page cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cache.errors import CacheError

if TYPE_CHECKING:
    import torch

# 64 MiB per staging buffer: at ~25 GB/s host-to-device one chunk takes ~2.5 ms, so the
# per-copy launch overhead (~10 us) is noise, and two buffers pin only 128 MiB.
STAGING_BYTES = 64 * 2**20
N_STAGING = 2


def _require_cuda(what: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise CacheError(f"{what} needs a CUDA device, and torch sees none; use device='cpu' "
                         "and pin=False")


def staged_copy(src: np.ndarray, dst: torch.Tensor, *, chunk_rows: int, pinned: bool,
                non_blocking: bool) -> None:
    """Copy ``src`` (rows, ...) into ``dst`` of the same shape, ``chunk_rows`` at a time."""
    import torch

    rows = src.shape[0]
    on_cuda = dst.is_cuda
    staging = [
        torch.empty((min(chunk_rows, rows), *src.shape[1:]), dtype=dst.dtype, pin_memory=pinned)
        for _ in range(N_STAGING)
    ]
    pending: list[torch.cuda.Event | None] = [None] * N_STAGING
    for step, start in enumerate(range(0, rows, chunk_rows)):
        stop = min(start + chunk_rows, rows)
        slot = step % N_STAGING
        if pending[slot] is not None:
            pending[slot].synchronize()  # the GPU has finished reading this buffer
        buf = staging[slot][: stop - start]
        buf.copy_(torch.from_numpy(src[start:stop]))
        dst[start:stop].copy_(buf, non_blocking=non_blocking)
        if on_cuda:
            # Freed staging blocks stay safe after return: torch's pinned-memory allocator
            # records the copy and reuses a block only once it has completed.
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(dst.device))
            pending[slot] = event
    if on_cuda and not non_blocking:
        torch.cuda.current_stream(dst.device).synchronize()


def to_torch(array: np.ndarray, *, device: str | torch.device, pin: bool,
             non_blocking: bool) -> torch.Tensor:
    import torch

    target = torch.device(device)
    if target.type == "cpu":
        tensor = torch.from_numpy(array)  # shares the mapped pages, no copy
        if not pin:
            return tensor
        _require_cuda("pin=True")
        pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        pinned.copy_(tensor)
        return pinned
    if target.type != "cuda":
        raise CacheError(f"device {str(device)!r} is not supported; use 'cpu' or 'cuda[:n]'")
    _require_cuda(f"device={str(device)!r}")
    dst = torch.empty(array.shape, dtype=torch.from_numpy(array[:0]).dtype, device=target)
    row_bytes = max(1, array[:1].nbytes)
    with torch.cuda.device(target):
        staged_copy(array, dst, chunk_rows=max(1, STAGING_BYTES // row_bytes), pinned=True,
                    non_blocking=non_blocking)
    return dst
