"""Batches of the ATFT-GAT recipe: several dates' cross-sections packed into one disjoint graph."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from trainers.atft_gat.data import Panel
from trainers.atft_gat.graph import DateGraphs


@dataclass
class Batch:
    """Several dates' cross-sections as one disjoint graph.

    x: (N, L, F) windows; y: (N, H) z-scored targets (NaN = no label); y_raw: (N, H) returns;
    group: (N,) date slot 0..G-1 (contiguous); stock: (N,) stock index; date: (G,) date index;
    edges: (2, E) node ids; weight: (E,).
    """

    x: torch.Tensor
    y: torch.Tensor
    y_raw: torch.Tensor
    group: torch.Tensor
    stock: torch.Tensor
    date: np.ndarray
    edges: torch.Tensor
    weight: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def sub(self, s: slice) -> Batch:
        """The nodes in ``s`` and the edges among them (used when a step is micro-batched)."""
        lo, hi = s.start or 0, s.stop if s.stop is not None else len(self)
        if lo == 0 and hi == len(self):
            return self
        keep = (self.edges[0] >= lo) & (self.edges[0] < hi) & (self.edges[1] >= lo) & (
            self.edges[1] < hi)
        group = self.group[lo:hi]
        first = int(group[0]) if len(group) else 0
        last = int(group[-1]) + 1 if len(group) else 0
        return Batch(self.x[lo:hi], self.y[lo:hi], self.y_raw[lo:hi], group - first,
                     self.stock[lo:hi], self.date[first:last], self.edges[:, keep] - lo,
                     self.weight[keep])


def make_batch(panel: Panel, y_z: torch.Tensor, graphs: DateGraphs, dates: np.ndarray, *,
               lookback: int, with_graph: bool) -> Batch:
    xs, ys, yr, groups, stocks, edges, weights = [], [], [], [], [], [], []
    offset = 0
    lookup = np.full(panel.present.shape[1], -1, dtype=np.int64)
    for g, d in enumerate(dates):
        window, idx = panel.window(int(d), lookback)  # (n, L, F), (n,) stock ids
        idx_np = idx.numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
        n = len(idx_np)
        xs.append(window)
        ys.append(y_z[int(d), idx_np])
        yr.append(panel.y[int(d), idx_np])
        groups.append(torch.full((n,), g, dtype=torch.long))
        stocks.append(torch.as_tensor(idx_np, dtype=torch.long))
        if with_graph:
            src, dst, w = graphs.edges(int(d))
            lookup[idx_np] = np.arange(n) + offset
            s_node, d_node = lookup[src], lookup[dst]
            ok = (s_node >= 0) & (d_node >= 0)
            edges.append(np.stack([s_node[ok], d_node[ok]]))
            weights.append(w[ok])
            lookup[idx_np] = -1
        offset += n
    if with_graph and edges:
        e = torch.from_numpy(np.concatenate(edges, axis=1).astype(np.int64))
        w = torch.from_numpy(np.concatenate(weights).astype(np.float32))
    else:
        e, w = torch.zeros((2, 0), dtype=torch.long), torch.zeros(0)
    return Batch(torch.cat(xs), torch.cat(ys), torch.cat(yr), torch.cat(groups),
                 torch.cat(stocks), np.asarray(dates), e, w)


def pack_dates(panel: Panel, dates: np.ndarray, budget: Callable[[], int]
               ) -> Iterator[np.ndarray]:
    """Consecutive groups of ``dates`` whose stocks add up to at most ``budget()`` rows (a
    date larger than that on its own forms a group, cut into chunks by the runner). The
    budget is read per group, so a halving during one group shrinks the next ones."""
    counts = panel.present[torch.as_tensor(dates)].sum(dim=1).numpy() if len(dates) else []
    group: list[int] = []
    rows = 0
    for d, n in zip(dates, counts, strict=True):
        if group and rows + int(n) > budget():
            yield np.asarray(group, dtype=np.int64)
            group, rows = [], 0
        group.append(int(d))
        rows += int(n)
    if group:
        yield np.asarray(group, dtype=np.int64)
