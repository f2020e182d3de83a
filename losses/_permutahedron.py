"""Projection onto the permutahedron (Blondel et al. 2020) and hard ranks, row-wise, in numpy.

Everything here works on a batch of rows ``(rows, n)`` with an optional validity mask: each row is
ranked among its own valid entries only (``k`` of them, ranks ``1..k``); invalid entries get 0.
Arithmetic is float64 whatever the caller's dtype, so that ranks stay accurate when the scaled
inputs are huge (the hard-rank limit, strength -> 0): the error is one float64 rounding of them.

Soft ranks (ascending: the smallest value gets the smallest rank)::

    r = argmin_{mu in Perm(1..k)} ||mu - z||^2

Sort the row ascending (``s``), let ``u = (1, ..., k)``; then ``r_sorted = s - v`` where ``v`` is
the non-decreasing isotonic regression of ``s - u`` (Blondel et al., Prop. 3, in ascending order).
On a PAV block ``B`` that is ``r_i = s_i - mean_B(s) + mean_B(u)``, so the Jacobian
``d r_sorted / d s`` is ``I - A`` with ``A`` averaging within blocks: the backward pass is
"subtract the block mean of the incoming gradient". Sort O(n log n), PAV O(n), the rest O(n);
no n x n object is ever formed.

Layout: the valid entries of all rows, each row sorted ascending, are packed end to end in one flat
array (``Packing.index`` says where each came from). Every step after the sort is then one
vectorised numpy pass over that array, except the PAV, which is one C++ call per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from losses import _isotonic

# The isotonic-regression implementation; the tests swap in the pure-Python reference.
isotonic = _isotonic.scipy_isotonic


@dataclass(frozen=True)
class Packing:
    """The valid entries of each row, sorted ascending, packed end to end.

    Packed arrays are 2-D ``(rows, n)`` when every entry is valid (so that per-row values
    broadcast without copies) and 1-D ``(total,)`` otherwise. ``expand`` and ``row_sum`` hide
    the difference.
    """

    shape: tuple[int, int]
    index: np.ndarray  # (total,) int64: flat position in the (rows, n) input of each packed entry
    row_offsets: np.ndarray  # (rows + 1,) int64: where each row starts in the packed array
    counts: np.ndarray  # (rows,) int64: valid entries per row
    rank: np.ndarray  # 1..k within each row, broadcastable against a packed array
    full: bool  # every entry valid

    def flatten(self, a: np.ndarray) -> np.ndarray:
        """(rows, n) array in input order -> packed (sorted, valid only)."""
        packed = np.take(np.ascontiguousarray(a).reshape(-1), self.index)
        return packed.reshape(self.shape) if self.full else packed

    def unflatten(self, packed: np.ndarray) -> np.ndarray:
        """Inverse of ``flatten``; invalid entries are 0."""
        size = self.shape[0] * self.shape[1]
        out = np.empty(size, dtype=packed.dtype) if self.full else np.zeros(size, packed.dtype)
        out[self.index] = packed.reshape(-1)
        return out.reshape(self.shape)

    def flat_rank(self) -> np.ndarray:
        """``rank`` as one entry per packed element (1-D, read-only)."""
        if self.full:
            return _tiled_positions(*self.shape)
        return self.rank

    def expand(self, per_row: np.ndarray) -> np.ndarray:
        """(rows,) -> broadcastable against a packed array."""
        return per_row[:, None] if self.full else np.repeat(per_row, self.counts)

    def row_sum(self, packed: np.ndarray) -> np.ndarray:
        """Sum of a packed array over each row's entries -> (rows,)."""
        if self.full:
            return packed.sum(axis=1)
        out = np.zeros(self.shape[0], dtype=packed.dtype)
        nonempty = self.counts > 0
        if nonempty.any():  # reduceat runs from each start to the next: skip empty rows
            out[nonempty] = np.add.reduceat(packed, self.row_offsets[:-1][nonempty])
        return out

    def row_dot(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per-row dot product of two packed arrays -> (rows,)."""
        if self.full:
            return np.einsum("ij,ij->i", a, b)
        return self.row_sum(a * b)

    def row_first(self, packed: np.ndarray) -> np.ndarray:
        """Each row's first packed entry (its minimum); 0 for an empty row."""
        if self.full:
            return packed[:, 0].copy()
        out = np.zeros(self.shape[0], dtype=packed.dtype)
        nonempty = self.counts > 0
        out[nonempty] = packed[self.row_offsets[:-1][nonempty]]
        return out


@lru_cache(maxsize=8)
def _tiled_positions(rows: int, n: int) -> np.ndarray:
    """(1..n) repeated for ``rows`` rows, flat; cached because every full batch needs it."""
    out = np.tile(np.arange(1, n + 1, dtype=np.float64), rows)
    out.flags.writeable = False
    return out


def pack(keys: np.ndarray, valid: np.ndarray | None) -> Packing:
    """Sort each row of ``keys`` ascending over its valid entries (NaN-free) and pack them."""
    rows, n = keys.shape
    if valid is not None:
        keys = np.where(valid, keys, np.inf)  # invalid entries sort last
        counts = valid.sum(axis=1, dtype=np.int64)
    else:
        counts = np.full(rows, n, dtype=np.int64)
    perm = np.argsort(keys, axis=1)
    perm += (np.arange(rows, dtype=np.int64) * n)[:, None]  # row-local -> flat positions
    row_offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(counts, out=row_offsets[1:])
    positions = np.arange(1, n + 1, dtype=np.float64)
    if n > 0 and int(row_offsets[-1]) == rows * n:  # every entry valid: nothing to drop
        return Packing((rows, n), perm.reshape(-1), row_offsets, counts, positions[None], True)
    sorted_valid = np.arange(n) < counts[:, None]  # the first k sorted positions of each row
    rank = np.broadcast_to(positions, (rows, n))[sorted_valid]
    return Packing((rows, n), perm[sorted_valid], row_offsets, counts, rank, False)


def project_packed(s: np.ndarray, packing: Packing) -> tuple[np.ndarray, np.ndarray]:
    """Soft ranks of packed, row-wise non-decreasing ``s``; also the PAV block starts."""
    y = np.subtract(s, packing.rank).reshape(-1)
    v, starts = isotonic(y, packing.row_offsets)
    # Singleton blocks give v = s - u, so r = u up to one rounding of s - u (exact in float32).
    v = v.reshape(s.shape)
    return np.subtract(s, v, out=v), starts


def centre_blocks(g: np.ndarray, starts: np.ndarray, scratch: np.ndarray | None = None) -> None:
    """VJP of ``project_packed``, in place: subtract from each entry its PAV block's mean.

    ``g`` is a packed array; ``scratch``, if given, is a float64 buffer of the same size to use.
    A singleton block's entry becomes exactly 0.
    """
    flat = g.reshape(-1)
    if flat.shape[0] == 0:
        return
    lengths = np.diff(np.append(starts, flat.shape[0]))
    block = np.repeat(np.arange(lengths.shape[0]), lengths)  # block id of each entry
    means = np.bincount(block, weights=flat, minlength=lengths.shape[0]) / lengths
    out = None if scratch is None else scratch.reshape(-1)
    flat -= np.take(means, block, out=out)


@dataclass(frozen=True)
class ProjectionState:
    """What the backward pass of ``project`` needs."""

    packing: Packing
    starts: np.ndarray  # (blocks,) flat start of each PAV block in the packed array
    bad_rows: np.ndarray | None  # rows with a non-finite valid input: NaN out, NaN gradient


def bad_rows(x: np.ndarray, valid: np.ndarray | None) -> np.ndarray | None:
    """Rows with a NaN/inf among their valid entries, or None if there is none."""
    finite = np.isfinite(x) if valid is None else np.isfinite(x) | ~valid
    bad = ~finite.all(axis=1)
    return bad if bad.any() else None


def project(z: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, ProjectionState]:
    """Soft ranks of each row of ``z`` (float64, (rows, n)); invalid entries are 0."""
    bad = bad_rows(z, valid)
    if bad is not None:
        # Keep NaN/inf away from the sort and the PAV; those rows are overwritten with NaN below.
        z = np.where(bad[:, None], 0.0, z)
    packing = pack(z, valid)
    r, starts = project_packed(packing.flatten(z), packing)
    out = packing.unflatten(r)
    if bad is not None:
        out[bad] = np.nan
    return out, ProjectionState(packing, starts, bad)


def project_backward(grad: np.ndarray, state: ProjectionState) -> np.ndarray:
    """Vector-Jacobian product of ``project``."""
    g = state.packing.flatten(grad)
    centre_blocks(g, state.starts)
    out = state.packing.unflatten(g)
    if state.bad_rows is not None:
        out[state.bad_rows] = np.nan
    return out


def hard_rank(t: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Ranks 1..k of each row among its valid entries, ties averaged (``rankdata`` "average").

    Returns the ranks (invalid entries 0) and, per row, whether its valid values are not all
    equal (False for a constant row and for a row with fewer than two valid entries).
    Valid entries must be finite.
    """
    packing = pack(t, valid)
    s = packing.flatten(t).reshape(-1)
    lo, hi = packing.row_offsets[:-1], packing.row_offsets[1:]
    varies = np.zeros(lo.shape[0], dtype=bool)
    nonempty = hi > lo
    varies[nonempty] = s[lo[nonempty]] != s[hi[nonempty] - 1]  # sorted: min != max
    if s.shape[0] == 0:
        return np.zeros(t.shape), varies
    new_group = np.empty(s.shape[0], dtype=bool)
    new_group[0] = True
    np.not_equal(s[1:], s[:-1], out=new_group[1:])
    new_group[lo[nonempty]] = True  # a tie never spans two rows
    rank = packing.flat_rank()
    if new_group.all():  # no ties (the usual case for real-valued targets)
        return packing.unflatten(rank), varies
    starts = np.flatnonzero(new_group)
    lengths = np.diff(np.append(starts, s.shape[0]))
    # The average of positions p..p+len-1 is p + (len - 1) / 2.
    ranks = np.repeat(rank[starts] + (lengths - 1) / 2.0, lengths)
    return packing.unflatten(ranks), varies
