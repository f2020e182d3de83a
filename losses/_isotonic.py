"""Pool-adjacent-violators (PAV): block structure of an increasing isotonic regression.

The soft-rank projection needs the fitted values (block means) for the forward pass and *where
the blocks are* for the backward pass (its Jacobian is block averaging). So the functions here
take many ragged rows packed end to end in one flat float64 array and return both: the fitted
values, flat, and the flat start index of every block.

Two implementations of the same contract:

- ``scipy_isotonic``: scipy's C++ PAV, one call per row (~30 us for 4,000 values). It calls the
  kernel behind ``scipy.optimize.isotonic_regression`` directly on slices of one preallocated
  buffer (the public wrapper allocates four arrays per call, ~1/3 of the time on 64 rows); if a
  scipy release moves that private kernel, it falls back to the public function (scipy >= 1.12).
- ``reference_isotonic``: a textbook stack PAV in plain Python. It is the reference the tests
  check the fast path against, and the fallback when scipy has neither.
"""

from __future__ import annotations

import numpy as np

try:  # scipy >= 1.12
    from scipy.optimize import isotonic_regression as _scipy_isotonic_regression
except ImportError:  # pragma: no cover - exercised only on old scipy
    _scipy_isotonic_regression = None
try:  # the C++ kernel of isotonic_regression: pava(y, w, r) fits y in place
    from scipy.optimize._pava_pybind import pava as _pava
except ImportError:  # pragma: no cover - a scipy that reorganised its internals
    _pava = None


def scipy_isotonic(y: np.ndarray, row_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing isotonic regression of every row of ``y``, independently.

    ``y`` is 1-D float64 holding the rows back to back; row ``i`` is
    ``y[row_offsets[i]:row_offsets[i + 1]]`` (``row_offsets`` has one more entry than rows).
    Returns ``(fitted, starts)``: the fitted values (same layout as ``y``; ``y`` itself may be
    overwritten with them) and the flat index at which each block starts, ascending.
    """
    if _pava is not None:
        return _pava_rows(y, row_offsets)
    if _scipy_isotonic_regression is None:  # pragma: no cover
        return reference_isotonic(y, row_offsets)
    fitted = np.empty_like(y)
    parts = []
    for lo, hi in zip(row_offsets[:-1].tolist(), row_offsets[1:].tolist(), strict=True):
        if hi > lo:
            res = _scipy_isotonic_regression(y[lo:hi])
            fitted[lo:hi] = res.x
            # .blocks = start of every block plus the end sentinel (== hi - lo).
            parts.append(res.blocks[:-1] + lo)
    if not parts:
        return fitted, np.zeros(0, dtype=np.int64)
    return fitted, np.concatenate(parts).astype(np.int64, copy=False)


def _pava_rows(y: np.ndarray, row_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``scipy_isotonic`` through scipy's kernel, fitting ``y`` in place."""
    y = np.ascontiguousarray(y, dtype=np.float64)
    longest = int(np.diff(row_offsets).max(initial=0))
    # Row-sized scratch, reused row after row (small, so no fresh pages per call): the kernel
    # overwrites the weights with block sizes and writes the block boundaries.
    weights = np.empty(longest, dtype=np.float64)
    bounds = np.empty(longest + 1, dtype=np.intp)
    parts = []
    for lo, hi in zip(row_offsets[:-1].tolist(), row_offsets[1:].tolist(), strict=True):
        if hi > lo:
            weights[: hi - lo] = 1.0
            n_blocks = _pava(y[lo:hi], weights[: hi - lo], bounds[: hi - lo + 1])[3]
            parts.append(bounds[:n_blocks] + lo)
    if not parts:
        return y, np.zeros(0, dtype=np.int64)
    return y, np.concatenate(parts).astype(np.int64, copy=False)


def reference_isotonic(y: np.ndarray, row_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same contract as ``scipy_isotonic``, in plain Python (O(n) per row, slow constant)."""
    fitted = np.empty_like(y)
    starts: list[int] = []
    for lo, hi in zip(row_offsets[:-1].tolist(), row_offsets[1:].tolist(), strict=True):
        # Stack of blocks as [start, sum, count]; merge while the previous mean exceeds the last.
        stack: list[list[float]] = []
        for i in range(lo, hi):
            stack.append([i, float(y[i]), 1.0])
            while len(stack) > 1 and stack[-2][1] * stack[-1][2] > stack[-1][1] * stack[-2][2]:
                _, total, count = stack.pop()
                stack[-1][1] += total
                stack[-1][2] += count
        for j, (start, total, count) in enumerate(stack):
            end = int(stack[j + 1][0]) if j + 1 < len(stack) else hi
            fitted[int(start) : end] = total / count
            starts.append(int(start))
    return fitted, np.asarray(starts, dtype=np.int64)
