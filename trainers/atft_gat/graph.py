"""Per-date stock graphs from trailing return correlations (the "GAT" part's input).

For date t, stock i gets an edge from each of its ``k`` most correlated other stocks j, among
those with correlation >= ``threshold``, where the correlation is measured on the returns of
the ``window`` dates strictly before t (rows ``[t - window, t - 1]`` of ``returns``). Nothing
from date t or later is used, so the graph of a validation date never sees its own labels.

Choices:

* Direction: an edge ``src=j -> dst=i`` means "i listens to j"; every stock has at most ``k``
  in-edges (its own top-k), and the graph is **not symmetrised**: j may be among i's top-k
  without i being among j's. This bounds the in-degree, and so the attention cost per node, by
  k. Symmetrising would add the reverse edges and make hub stocks' degree unbounded.
* No self-loops; a model that wants a node's own state adds it itself.
* A stock is left without edges (in or out) on date t when it has fewer than ``min_periods``
  finite returns in the window, a constant return over the window, or is absent on date t
  (``present``). A pair needs ``min_periods`` dates on which both returned.
* Missing returns: the correlation is **pairwise-complete**: a pair's means, variances and
  covariance use exactly the dates on which both stocks returned (what ``pandas.DataFrame.corr``
  computes). A pair whose overlap is constant for one of the two has no correlation, so no
  edge (in float32 such a pair can keep a rounding-level variance; its |correlation| then stays
  below 1e-3, under any useful threshold).
* Edge weight = that correlation (float32); within a date, edges are ordered by ``dst`` then
  by decreasing weight (the order of exactly equal weights is unspecified). So the graph of a
  smaller ``k`` is the first ``k`` edges of every ``dst``: :meth:`DateGraphs.top` takes it
  from a graph built once for the largest ``k`` wanted, without a rebuild.

How (cost at S stocks): pairwise-complete correlations need, per pair, the overlap count
``N = sum m_i m_j``, the overlap sums ``A = sum z_i m_j`` and ``B = sum z_i^2 m_j`` (and their
transposes) and the cross product ``C = sum z_i z_j``, with ``m`` = "returned" and ``z`` the
return (0 where missing). These six (S, S) running sums are **updated incrementally**: moving
from date t to t+1 adds the entering row and removes the leaving one, a rank-2 update of each
(one ``addmm``), instead of recomputing (S x W) @ (W x S) products over the whole window. Every
``refresh`` dates they are recomputed from scratch (six such matmuls), which bounds float32
rounding drift; returns are also re-centred and re-scaled per stock at each refresh (on the
window before it, so nothing looks ahead), which keeps the sums well conditioned. Per date,
each row tile of the sums is updated, turned into correlations and top-k'd while it is in the
CPU's cache, by as many worker threads as torch has (each running single-threaded ops). The
result does not depend on the number of threads. Everything runs on any torch device (the
training GPU when there is one, in whole-matrix tiles). 4,000 stocks x 2,500 dates: see
``scripts/bench_graph.py`` and the README.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from trainers.errors import UserError

# Dates between exact recomputations of the running sums (a refresh is six (S x W) @ (W x S)
# matmuls); 64 keeps the float32 drift of the correlations below 1e-5 (measured in
# scripts/bench_graph.py, tested in tests/trainers/atft_gat/test_graph.py).
REFRESH_DATES = 64
# Elements of a row tile of the (S, S) sums that a CPU thread handles at once (32 rows at 4,000
# stocks): the tile of the six sums and the formula's temporaries (~5 MB) stays in cache between
# the update and the formula. On two busy cores, single-threaded ops on 16-64 row tiles of 4,000
# took a fifth of the CPU time of two-threaded ops on whole matrices.
TILE_ELEMENTS = 2**17
# A stock whose variance over the window is below this share of its mean square (around the
# refresh's centre) is constant up to float32 rounding: it has no correlation.
VAR_EPS = 1e-5
# Dates per chunk of DateGraphs.top: ~5M edges at 4,000 stocks x 20 in-edges.
TOP_CHUNK_DATES = 64
# Stands for "no correlation" inside the top-k: below every valid correlation and threshold.
INVALID = -4.0


@dataclass(frozen=True)
class GraphConfig:
    """Settings of the correlation graph.

    Attributes:
        window: trailing dates whose returns measure a correlation.
        k: most correlated neighbours kept per stock (its in-degree bound).
        threshold: minimum correlation of an edge.
        min_periods: minimum finite returns per stock, and common dates per pair, in the
            window; capped at ``window`` (so a short window needs no matching min_periods).
    """

    window: int = 60
    k: int = 10
    threshold: float = 0.3
    min_periods: int = 20

    @property
    def required_periods(self) -> int:
        """min_periods capped at the window."""
        return min(self.min_periods, self.window)

    def __post_init__(self) -> None:
        problems = []
        if self.window < 2:
            problems.append(f"graph window must be >= 2 dates, got {self.window}")
        if self.k < 1:
            problems.append(f"graph k must be >= 1, got {self.k}")
        if not -1.0 <= self.threshold <= 1.0:
            problems.append(f"graph threshold must be in [-1, 1], got {self.threshold}")
        if self.min_periods < 2:
            problems.append(f"graph min_periods must be >= 2, got {self.min_periods}")
        if problems:
            raise UserError("; ".join(problems))


@dataclass(frozen=True)
class DateGraphs:
    """Edges of every date in one CSR-like layout over dates.

    The edges of date d are ``src/dst/weight[offsets[d]:offsets[d + 1]]``; node ids are stock
    (code) indices ``0..S-1`` (columns of the return matrix), the same on every date. Plain
    arrays only, so the graphs can be saved and reloaded as an ``.npz`` as they are.
    """

    src: np.ndarray  # (E,) int32 neighbour j
    dst: np.ndarray  # (E,) int32 stock i that listens
    weight: np.ndarray  # (E,) float32 correlation
    offsets: np.ndarray  # (D + 1,) int64
    # Read only the first ``limit`` in-edges of every (date, dst); 0 reads all. Set by
    # :meth:`prefix`, which (unlike :meth:`top`) copies nothing: the arrays may be a memory
    # map shared by every worker, and a date's prefix costs one pass over its own edges.
    limit: int = 0

    @property
    def n_dates(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_edges(self) -> int:
        return int(self.edges_per_date().sum()) if self.limit else len(self.src)

    def edges(self, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(src, dst, weight) of date ``d``: views into the shared arrays (copies of the
        date's first ``limit`` edges per stock under a limit)."""
        if not -self.n_dates <= d < self.n_dates:
            raise IndexError(f"date index {d} out of range for {self.n_dates} dates")
        d %= self.n_dates
        lo, hi = int(self.offsets[d]), int(self.offsets[d + 1])
        src, dst, weight = self.src[lo:hi], self.dst[lo:hi], self.weight[lo:hi]
        if self.limit and hi > lo:
            keep = _group_rank(np.asarray(dst), np.zeros(1, dtype=np.int64)) < self.limit
            return src[keep], dst[keep], weight[keep]
        return src, dst, weight

    def edges_per_date(self) -> np.ndarray:
        """(D,) int64 edge count of every date."""
        if not self.limit:
            return np.diff(self.offsets)
        return self._kept(self.limit)[1]

    def prefix(self, k: int) -> DateGraphs:
        """The graphs as :meth:`top` gives them, read lazily (see ``limit``)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return replace(self, limit=min(k, self.limit) if self.limit else k)

    def _kept(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(keep mask over all edges, kept edges per date) of the per-(date, dst) prefix k."""
        keep = np.empty(len(self.src), dtype=bool)
        kept = np.zeros(self.n_dates, dtype=np.int64)
        # In chunks of dates, so the int64 temporaries stay small at 10^8 edges.
        for d0 in range(0, self.n_dates, TOP_CHUNK_DATES):
            bounds = self.offsets[d0 : d0 + TOP_CHUNK_DATES + 1]
            lo, hi = int(bounds[0]), int(bounds[-1])
            if hi == lo:
                continue
            keep[lo:hi] = _group_rank(np.asarray(self.dst[lo:hi]),
                                      bounds[:-1][bounds[:-1] < hi] - lo) < k
            kept_before = np.concatenate([[0], np.cumsum(keep[lo:hi], dtype=np.int64)])
            kept[d0 : d0 + len(bounds) - 1] = np.diff(kept_before[bounds - lo])
        return keep, kept

    def top(self, k: int) -> DateGraphs:
        """The graphs with each stock's ``k`` strongest in-edges only: the graphs a build with
        ``k`` gives (edges are sorted by dst, then by decreasing weight, so this is the first
        ``k`` edges of every (date, dst)). Returns ``self`` when no stock has more than k."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        keep, kept = self._kept(min(k, self.limit) if self.limit else k)
        if keep.all():
            return replace(self, limit=0) if self.limit else self
        return DateGraphs(
            src=self.src[keep],
            dst=self.dst[keep],
            weight=self.weight[keep],
            offsets=np.concatenate([[0], np.cumsum(kept)]).astype(np.int64),
        )


def _group_rank(dst: np.ndarray, date_starts: np.ndarray) -> np.ndarray:
    """Rank of every edge inside its (date, dst) group: edges run sorted by date, then dst,
    then decreasing weight, so a group starts where dst changes or a date begins."""
    starts = np.ones(len(dst), dtype=bool)
    np.not_equal(dst[1:], dst[:-1], out=starts[1:])
    starts[date_starts] = True
    start_pos = np.flatnonzero(starts)
    group_len = np.diff(np.append(start_pos, len(dst)))
    return np.arange(len(dst)) - np.repeat(start_pos, group_len)


class _RunningSums:
    """The six (S, S) window sums of pairwise-complete correlation, in float32 on a device.

    With ``z`` the standardised returns (0 where missing) and ``m`` the 0/1 "returned" mask of
    the window's dates (W, S): ``n = m'm``, ``c = z'z``, ``a = z'm``, ``at = m'z``,
    ``b = (z^2)'m``, ``bt = m'(z^2)``. ``a`` and ``at`` (``b``, ``bt``) are each other's
    transposes; both are kept so that a row tile of either is contiguous. Every method works on
    a tile of rows [lo, hi), so a date's update and formula touch each tile once, while it is
    in the cache.
    """

    def __init__(self, n_stocks: int, device: torch.device):
        def new() -> torch.Tensor:
            return torch.zeros(n_stocks, n_stocks, dtype=torch.float32, device=device)

        self.n, self.c, self.a, self.at, self.b, self.bt = (new() for _ in range(6))

    def reset(self, z: torch.Tensor, m: torch.Tensor, lo: int, hi: int) -> None:
        """Exact sums of a window's z, m (W, S), rows [lo, hi)."""
        zt, mt = z[:, lo:hi].t(), m[:, lo:hi].t()  # (T, W)
        torch.mm(mt, m, out=self.n[lo:hi])
        torch.mm(zt, z, out=self.c[lo:hi])
        torch.mm(zt, m, out=self.a[lo:hi])
        torch.mm(mt, z, out=self.at[lo:hi])
        torch.mm(zt * zt, m, out=self.b[lo:hi])
        torch.mm(mt, z * z, out=self.bt[lo:hi])

    def shift(self, z: torch.Tensor, m: torch.Tensor, lo: int, hi: int) -> None:
        """Add the entering date and remove the leaving one, rows [lo, hi): z, m (2, S) =
        [entering, leaving]. Each sum gets one rank-2 update, ``sum += left' @ (sign * right)``.
        """
        sign = torch.tensor([[1.0], [-1.0]], dtype=z.dtype, device=z.device)
        zs, ms, zzs = z * sign, m * sign, z * z * sign  # (2, S)
        zt, mt = z[:, lo:hi].t(), m[:, lo:hi].t()  # (T, 2)
        self.n[lo:hi].addmm_(mt, ms)
        self.c[lo:hi].addmm_(zt, zs)
        self.a[lo:hi].addmm_(zt, ms)
        self.at[lo:hi].addmm_(mt, zs)
        self.b[lo:hi].addmm_(zt * zt, ms)
        self.bt[lo:hi].addmm_(mt, zzs)

    def correlations(self, lo: int, hi: int, need: torch.Tensor, out: torch.Tensor,
                     scratch: torch.Tensor) -> torch.Tensor:
        """Pairwise-complete correlations of rows [lo, hi) against every stock into ``out``
        (hi - lo, S); INVALID for self-pairs and where the overlap is below ``need`` (S,), the
        overlap each column's stock requires (+inf for an unusable stock), or is constant.
        ``scratch`` is (2, >= hi - lo, S) of working space.

        Every term is multiplied by the overlap n, so no reciprocal is needed:
        ``corr = (n c - a at) / sqrt((n b - a^2) (n bt - at^2))``; each step writes into
        ``out`` or ``scratch`` (no temporaries: this formula is most of a graph's time).
        """
        n, a, at = self.n[lo:hi], self.a[lo:hi], self.at[lo:hi]
        var_i, var_j = scratch[0, : hi - lo], scratch[1, : hi - lo]
        cov = torch.mul(n, self.c[lo:hi], out=out).addcmul_(a, at, value=-1.0)
        torch.mul(n, self.b[lo:hi], out=var_i).addcmul_(a, a, value=-1.0)
        torch.mul(n, self.bt[lo:hi], out=var_j).addcmul_(at, at, value=-1.0)
        # A zero variance gives x * inf or 0 * inf, a rounding-negative one a NaN root: both
        # end as INVALID. (A constant overlap can also leave a positive rounding-level
        # variance: the correlation is then below 1e-3 in size, under any useful threshold.)
        cov.mul_(var_i.mul_(var_j).rsqrt_())
        torch.nan_to_num_(cov, nan=INVALID, posinf=INVALID, neginf=INVALID)
        # n = 0 needs no guard beyond this: such a pair is below every ``need``.
        cov.masked_fill_(n < need, INVALID)
        cov[:, lo:hi].diagonal().fill_(INVALID)
        return cov


def _standardise(window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-stock centre and scale of a (W, S) window's finite returns: (shift, scale) (S,).

    Only rounding depends on them (correlations do not change under a per-stock affine map);
    a stock with no spread in the window gets the median scale of the others.
    """
    finite = torch.isfinite(window)
    count = finite.sum(0).clamp(min=1)
    x0 = torch.where(finite, window, 0.0)
    mean = x0.sum(0) / count
    var = torch.where(finite, window - mean, 0.0).square().sum(0) / count
    std = var.sqrt()
    ok = std > 0
    fallback = std[ok].median() if bool(ok.any()) else torch.ones((), device=window.device)
    return mean, torch.where(ok, std, fallback)


def _standardised(rows: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, m) of return rows (..., S): standardised returns, 0 where missing, and the float
    0/1 mask of finite returns."""
    finite = torch.isfinite(rows)
    return torch.where(finite, (rows - shift) / scale, 0.0), finite.to(torch.float32)


def _tiles_of_one_date(sums: _RunningSums, share: list[tuple[int, int]], *,
                       reset: tuple[torch.Tensor, torch.Tensor] | None,
                       step: tuple[torch.Tensor, torch.Tensor] | None, need: torch.Tensor,
                       out: torch.Tensor, scratch: torch.Tensor, values: torch.Tensor,
                       neighbour: torch.Tensor) -> None:
    """One worker's row tiles of one date: bring the sums to this date (``reset`` from a
    window's (z, m), or one ``step`` of (entering, leaving) rows), then correlations and the
    top-k of each row into ``values`` / ``neighbour`` (S, k)."""
    k = values.shape[1]
    for lo, hi in share:
        if reset is not None:
            sums.reset(*reset, lo, hi)
        elif step is not None:
            sums.shift(*step, lo, hi)
        corr = sums.correlations(lo, hi, need, out[: hi - lo], scratch)
        torch.topk(corr, k, dim=-1, sorted=True, out=(values[lo:hi], neighbour[lo:hi]))


@contextmanager
def _single_threaded_ops(enabled: bool) -> Iterator[None]:
    """Run torch CPU ops on one thread each (our own threads share the tiles instead)."""
    if not enabled:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _EdgeSink:
    """Where build_graphs puts each block of dates' edges: in memory, or (``spill_dir``)
    appended to three unlinked temporary files that end up memory-mapped, so a seed-sized
    graph (1.8 GB) never sits in the process's private memory, nor does the copy that
    joining in-memory blocks makes."""

    DTYPES = (np.int32, np.int32, np.float32)  # src, dst, weight

    def __init__(self, spill_dir: str | Path | None) -> None:
        self.counts: list[np.ndarray] = []
        self.parts: list[list[np.ndarray]] = [[], [], []]
        self.files = None
        if spill_dir is not None:
            try:
                self.files = [tempfile.TemporaryFile(dir=spill_dir, prefix=".graph-")
                              for _ in self.DTYPES]
            except OSError:  # an unwritable directory: keep the edges in memory instead
                self.files = None

    def add(self, counts: np.ndarray, *columns: np.ndarray) -> None:
        self.counts.append(counts)
        for i, column in enumerate(columns):
            column = np.ascontiguousarray(column, dtype=self.DTYPES[i])
            if self.files is None:
                self.parts[i].append(column)
            else:
                self.files[i].write(memoryview(column).cast("B"))

    def finish(self) -> tuple[np.ndarray, ...]:
        """(counts per date, src, dst, weight)."""
        counts = np.concatenate(self.counts) if self.counts else np.zeros(0, np.int64)
        n_edges = int(counts.sum())
        columns = []
        for i, dtype in enumerate(self.DTYPES):
            if self.files is None:
                # One column at a time, its blocks freed once joined.
                columns.append(np.concatenate(self.parts[i]) if self.parts[i]
                               else np.zeros(0, dtype))
                self.parts[i] = []
                continue
            f = self.files[i]
            f.flush()
            columns.append(np.memmap(f, dtype=dtype, mode="r", shape=(n_edges,))
                           if n_edges else np.zeros(0, dtype))
            f.close()  # the map keeps its own handle; the unlinked file goes with it
        return counts, *columns


def build_graphs(
    returns: np.ndarray,
    cfg: GraphConfig,
    *,
    present: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    refresh: int = REFRESH_DATES,
    spill_dir: str | Path | None = None,
    on_dates: Callable[[int], None] | None = None,
) -> DateGraphs:
    """Correlation graphs of every date of a (dates, stocks) return matrix.

    Args:
        returns: (D, S) float; row t holds returns realised by date t (e.g. ``f_ret_1d_past``,
            the return from t-1 to t); NaN = missing. Date t's graph reads rows < t only.
        present: optional (D, S) bool; a stock absent on date t gets no edges that date.
            Absence is known at t, so it does not break the no-look-ahead rule.
        device: where the sums and top-k run; the result is always numpy on the CPU.
        refresh: dates between exact recomputations of the running sums (1 = recompute every
            date, no incremental update; for tests and drift measurements).
        spill_dir: a directory for the edges as they are found (see ``_EdgeSink``): the
            returned arrays are then read-only memory maps of unlinked files there.
        on_dates: called with the number of dates just finished, after each block of dates
            (progress).
    """
    returns = np.asarray(returns)
    if returns.ndim != 2:
        raise ValueError(f"returns must be (dates, stocks), got shape {returns.shape}")
    n_dates, n_stocks = returns.shape
    if present is None:
        present = np.ones((n_dates, n_stocks), dtype=bool)
    if np.shape(present) != returns.shape:
        raise ValueError(
            f"present must have the shape of returns {returns.shape}, got {np.shape(present)}"
        )
    if refresh < 1:
        raise ValueError(f"refresh must be >= 1, got {refresh}")
    if n_dates == 0 or n_stocks < 2:
        return DateGraphs(src=np.zeros(0, np.int32), dst=np.zeros(0, np.int32),
                          weight=np.zeros(0, np.float32),
                          offsets=np.zeros(n_dates + 1, np.int64))
    device = torch.device(device)
    w, periods, k = cfg.window, cfg.required_periods, min(cfg.k, n_stocks - 1)
    # Row t + w of `padded` is returns[t]; the window of date t is padded[t : t + w].
    padded = torch.full((n_dates + w, n_stocks), float("nan"), dtype=torch.float32)
    padded[w:] = torch.from_numpy(np.array(returns, dtype=np.float32))  # a writable copy
    padded = padded.to(device)
    present_t = torch.as_tensor(np.asarray(present, dtype=bool)).to(device)

    # On a CPU, each of our worker threads takes whole row tiles with single-threaded ops;
    # on a GPU, one tile is the whole matrix.
    on_cpu = device.type == "cpu"
    workers = max(1, torch.get_num_threads()) if on_cpu else 1
    tile = min(max(1, TILE_ELEMENTS // n_stocks) if on_cpu else n_stocks, n_stocks)
    tiles = [(lo, min(n_stocks, lo + tile)) for lo in range(0, n_stocks, tile)]
    shares = [tiles[i::workers] for i in range(workers)]
    buffers = [torch.empty(3, tile, n_stocks, dtype=torch.float32, device=device)
               for _ in range(workers)]  # per worker: the correlations and two scratch rows
    sums = _RunningSums(n_stocks, device)
    sink = _EdgeSink(spill_dir)
    with (torch.no_grad(), _single_threaded_ops(on_cpu and workers > 1),
          ThreadPoolExecutor(max_workers=workers) as pool):
        for r0 in range(0, n_dates, refresh):
            r1 = min(n_dates, r0 + refresh)
            shift, scale = _standardise(padded[r0 : r0 + w])
            window = _standardised(padded[r0 : r0 + w], shift, scale)  # (W, S) z and m
            # Per-stock count, sum and sum of squares over the window (the sums' diagonals).
            count, s1, s2 = window[1].sum(0), window[0].sum(0), window[0].square().sum(0)
            values = torch.empty(r1 - r0, n_stocks, k, dtype=torch.float32, device=device)
            neighbour = torch.empty(r1 - r0, n_stocks, k, dtype=torch.int64, device=device)
            node_ok = torch.empty(r1 - r0, n_stocks, dtype=torch.bool, device=device)
            for t in range(r0, r1):
                step = None
                if t > r0:  # row t-1+w enters the window, row t-1 leaves it
                    step = _standardised(padded[[t - 1 + w, t - 1]], shift, scale)  # (2, S)
                    count = count + step[1][0] - step[1][1]
                    s1 = s1 + step[0][0] - step[0][1]
                    s2 = s2 + step[0][0].square() - step[0][1].square()
                own_var = s2 - s1.square() / count.clamp(min=1)
                ok = (count >= periods) & (own_var > VAR_EPS * s2) & present_t[t]
                node_ok[t - r0] = ok
                need = torch.where(ok, float(periods), float("inf"))  # (S,)
                reset = window if step is None else None
                futures = [
                    pool.submit(_tiles_of_one_date, sums, share, reset=reset, step=step,
                                need=need, out=buf[0], scratch=buf[1:], values=values[t - r0],
                                neighbour=neighbour[t - r0])
                    for share, buf in zip(shares, buffers, strict=True)
                ]
                for future in futures:
                    future.result()
            # Unusable listeners and weak links are dropped on the small (dates, S, k) result.
            keep = (values >= cfg.threshold) & node_ok.unsqueeze(-1)
            date, dst, slot = keep.nonzero(as_tuple=True)  # row-major: date, dst, rank
            sink.add(
                torch.bincount(date, minlength=r1 - r0).cpu().numpy(),
                neighbour[date, dst, slot].to(torch.int32).cpu().numpy(),
                dst.to(torch.int32).cpu().numpy(),
                values[date, dst, slot].clamp(-1.0, 1.0).cpu().numpy(),
            )
            del date, dst, slot, keep
            if on_dates is not None:
                on_dates(r1 - r0)
    del sums, buffers
    counts, src, dst_np, weight = sink.finish()
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return DateGraphs(src=src, dst=dst_np, weight=weight, offsets=offsets)
