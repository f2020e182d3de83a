"""Correlation graphs: against a brute-force reference, no look-ahead, cluster recovery."""

from __future__ import annotations

import numpy as np
import pytest

from trainers.atft_gat.graph import DateGraphs, GraphConfig, build_graphs
from trainers.atft_gat.synthetic import generate_market
from trainers.errors import UserError


def _pairwise_complete(window: np.ndarray, min_periods: int) -> np.ndarray:
    """(S, S) Pearson correlation of every pair over the dates both returned (what pandas'
    ``DataFrame.corr(min_periods=...)`` gives), pair by pair; NaN where undefined."""
    n_stocks = window.shape[1]
    finite = np.isfinite(window)
    corr = np.full((n_stocks, n_stocks), np.nan)
    for i in range(n_stocks):
        for j in range(n_stocks):
            both = finite[:, i] & finite[:, j]
            if both.sum() < min_periods:
                continue
            x, y = window[both, i].astype(np.float64), window[both, j].astype(np.float64)
            if x.std() > 0 and y.std() > 0:
                corr[i, j] = np.corrcoef(x, y)[0, 1]
    return corr


def _reference_edges(
    returns: np.ndarray, present: np.ndarray, t: int, cfg: GraphConfig
) -> dict[tuple[int, int], float]:
    """{(src, dst): weight} of date t, stock by stock, following the documented definition."""
    window = returns[max(0, t - cfg.window) : t]  # (W', S) strictly before t
    n_stocks = returns.shape[1]
    finite = np.isfinite(window)
    usable = np.array([
        finite[:, i].sum() >= cfg.required_periods and window[finite[:, i], i].std() > 0
        and present[t, i] for i in range(n_stocks)
    ], dtype=bool)
    corr = _pairwise_complete(window, cfg.required_periods)
    edges = {}
    for i in np.flatnonzero(usable):
        candidates = [(corr[i, j], j) for j in np.flatnonzero(usable)
                      if j != i and np.isfinite(corr[i, j]) and corr[i, j] >= cfg.threshold]
        for c, j in sorted(candidates, reverse=True)[: cfg.k]:
            edges[(int(j), int(i))] = float(c)
    return edges


def _as_dict(graphs: DateGraphs, t: int) -> dict[tuple[int, int], float]:
    src, dst, weight = graphs.edges(t)
    return {(int(s), int(d)): float(w) for s, d, w in zip(src, dst, weight, strict=True)}


def _factor_returns(n_dates: int, n_stocks: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    groups = np.arange(n_stocks) % 3
    common = rng.standard_normal((n_dates, 3))[:, groups]
    return (common + 1.2 * rng.standard_normal((n_dates, n_stocks))) * 0.01


def test_matches_exact_pearson_without_gaps() -> None:
    returns = _factor_returns(40, 12, seed=0)
    cfg = GraphConfig(window=15, k=4, threshold=0.1, min_periods=10)
    graphs = build_graphs(returns, cfg)
    assert graphs.n_dates == 40
    for t in (0, 9, 10, 14, 15, 27, 39):
        got = _as_dict(graphs, t)
        expected = _reference_edges(returns, np.ones_like(returns, dtype=bool), t, cfg)
        assert got.keys() == expected.keys(), t
        for edge, w in expected.items():
            assert got[edge] == pytest.approx(w, abs=1e-5)
    # Full window and no gaps: the weights are numpy's Pearson correlations.
    window = returns[27 - 15 : 27]
    pearson = np.corrcoef(window.T)
    for (src, dst), w in _as_dict(graphs, 27).items():
        assert w == pytest.approx(pearson[src, dst], abs=1e-5)
    # Too little history before date 10 (min_periods): no edges at all.
    assert graphs.offsets[10] == 0


def test_gaps_and_absent_stocks() -> None:
    rng = np.random.default_rng(1)
    returns = _factor_returns(50, 15, seed=1)
    returns[rng.random(returns.shape) < 0.15] = np.nan
    returns[:, 4] = np.nan  # never returns: no edges ever
    returns[30:, 7] = np.nan  # stops returning at 30: its window thins out
    present = rng.random(returns.shape) > 0.1
    cfg = GraphConfig(window=20, k=3, threshold=0.0, min_periods=8)
    graphs = build_graphs(returns, cfg, present=present)
    for t in range(50):
        got = _as_dict(graphs, t)
        expected = _reference_edges(returns, present, t, cfg)
        assert got.keys() == expected.keys(), t
        for edge, w in expected.items():
            assert got[edge] == pytest.approx(w, abs=1e-5)
        for src, dst in got:
            assert present[t, src] and present[t, dst]
            assert 4 not in (src, dst)
    assert len(graphs.src) > 200


def test_invariants() -> None:
    returns = _factor_returns(80, 30, seed=2)
    cfg = GraphConfig(window=30, k=5, threshold=0.2, min_periods=10)
    graphs = build_graphs(returns, cfg)
    assert graphs.src.dtype == np.int32 and graphs.dst.dtype == np.int32
    assert graphs.weight.dtype == np.float32 and graphs.offsets.dtype == np.int64
    assert np.all(graphs.src != graphs.dst)  # no self-loops
    assert np.all(graphs.weight >= 0.2) and np.all(graphs.weight <= 1.0)
    for t in range(80):
        src, dst, weight = graphs.edges(t)
        assert np.all(np.diff(dst) >= 0)  # grouped by listener
        assert np.bincount(dst, minlength=30).max(initial=0) <= 5  # in-degree <= k
        pairs = set(zip(src.tolist(), dst.tolist(), strict=True))
        assert len(pairs) == len(src)  # no duplicate edges
    assert np.array_equal(graphs.edges(-1)[0], graphs.edges(79)[0])
    with pytest.raises(IndexError):
        graphs.edges(80)


def test_no_look_ahead() -> None:
    returns = _factor_returns(60, 20, seed=3)
    cfg = GraphConfig(window=20, k=4, threshold=0.0, min_periods=10)
    before = build_graphs(returns, cfg)
    t = 35
    changed = returns.copy()
    changed[t:] = np.random.default_rng(9).standard_normal(changed[t:].shape)
    changed[t + 3 :, :5] = np.nan
    after = build_graphs(changed, cfg)
    for d in range(t + 1):  # the graph of every date up to t reads rows < t only
        for a, b in zip(before.edges(d), after.edges(d), strict=True):
            assert np.array_equal(a, b), d
    assert not np.array_equal(before.edges(t + 1)[2], after.edges(t + 1)[2])


def test_recovers_clusters_of_the_synthetic_market() -> None:
    n_stocks, n_dates = 200, 150
    frame, oracle = generate_market(
        n_stocks=n_stocks, n_dates=n_dates, seed=4, n_clusters=10, return_oracle=True
    )
    returns = frame["f_ret_1d_past"].to_numpy().reshape(n_dates, n_stocks)
    cluster = oracle["cluster"].to_numpy()[:n_stocks]
    graphs = build_graphs(returns, GraphConfig())
    same = np.mean(cluster[graphs.src] == cluster[graphs.dst])
    assert same > 0.9  # chance: 1 / 10
    # No edges before min_periods dates of history; with a full window, every stock listens
    # to k cluster mates (19 per cluster, correlated at ~0.67 > threshold).
    per_date = np.diff(graphs.offsets)
    assert per_date[:20].max() == 0 and per_date[20:].min() > 0.95 * n_stocks * 10
    assert per_date[60:].min() == n_stocks * 10


def test_config_problems_are_reported_together() -> None:
    with pytest.raises(UserError, match="window must be >= 2.*k must be >= 1.*threshold"):
        GraphConfig(window=1, k=0, threshold=2.0, min_periods=1)
    # A short window caps the default min_periods rather than failing.
    assert GraphConfig(window=10).required_periods == 10
    assert GraphConfig(window=100).required_periods == 20


def test_degenerate_shapes() -> None:
    one = build_graphs(np.zeros((5, 1)), GraphConfig(window=2, min_periods=2))
    assert len(one.src) == 0 and list(one.offsets) == [0] * 6
    empty = build_graphs(np.zeros((0, 4)), GraphConfig())
    assert empty.n_dates == 0 and list(empty.offsets) == [0]
    with pytest.raises(ValueError, match="present must have the shape"):
        build_graphs(np.zeros((5, 3)), GraphConfig(), present=np.ones((5, 2), dtype=bool))


def test_full_size_graphs() -> None:
    # the flagship's size (its time is in scripts/bench_components.py)
    returns = _factor_returns(750, 500, seed=5)
    graphs = build_graphs(returns, GraphConfig())
    assert graphs.n_dates == 750 and len(graphs.src) > 0
    assert len(graphs.offsets) == 751 and graphs.offsets[-1] == len(graphs.src)
