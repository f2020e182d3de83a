"""Correlation graphs: against a brute-force reference, no look-ahead, cluster recovery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trainers.atft_gat.config import GRAPH_K_MAX_DEFAULT, TrainConfig
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


def test_pairwise_complete_differs_from_standardising_each_stock_alone() -> None:
    # Stock 1 misses the calm half of the window: over the overlap its partner's mean and
    # spread are not its partner's own, which is where the two definitions part.
    rng = np.random.default_rng(11)
    base = rng.standard_normal(40)
    returns = np.stack([base, base + 0.3 * rng.standard_normal(40)], axis=1)
    returns[:20] *= 0.1
    returns[:20, 0] += 0.5
    returns[:20, 1] = np.nan
    cfg = GraphConfig(window=40, k=1, threshold=-1.0, min_periods=10)
    graphs = build_graphs(np.vstack([returns, np.zeros((1, 2))]), cfg)
    window = returns[:40]
    expected = _pairwise_complete(window, 10)[0, 1]
    assert _as_dict(graphs, 40)[(1, 0)] == pytest.approx(expected, abs=1e-5)
    z = (window - np.nanmean(window, 0)) / np.nanstd(window, 0)
    own = np.nanmean(z[:, 0] * z[:, 1])  # the old "each stock on its own" approximation
    assert abs(own - expected) > 0.1


def test_incremental_sums_equal_a_from_scratch_computation() -> None:
    # 700 dates: 10 exact refreshes every 64 dates against one every date (refresh=1), with
    # 2 % of returns missing at random and a stock that stops and restarts.
    rng = np.random.default_rng(12)
    returns = _factor_returns(700, 40, seed=12)
    returns[rng.random(returns.shape) < 0.02] = np.nan
    returns[200:260, 5] = np.nan
    cfg = GraphConfig(window=30, k=6, threshold=0.1, min_periods=10)
    scratch = build_graphs(returns, cfg, refresh=1)
    for refresh in (64, 10**6):  # every 64 dates, and never after the first
        rolled = build_graphs(returns, cfg, refresh=refresh)
        assert np.array_equal(rolled.offsets, scratch.offsets)
        assert np.array_equal(rolled.src, scratch.src) and np.array_equal(rolled.dst, scratch.dst)
        # float32 running sums drift by rounding only: 1e-5 on a correlation.
        np.testing.assert_allclose(rolled.weight, scratch.weight, rtol=0, atol=1e-5)


def test_spilled_edges_are_the_in_memory_graph_mapped_from_unlinked_files(
        tmp_path: Path) -> None:
    returns = _factor_returns(300, 30, seed=21)
    cfg = GraphConfig(window=30, k=5, threshold=0.1, min_periods=10)
    in_memory = build_graphs(returns, cfg, refresh=16)
    spilled = build_graphs(returns, cfg, refresh=16, spill_dir=tmp_path)
    assert in_memory.n_edges > 0
    for name in ("src", "dst", "weight", "offsets"):
        assert np.array_equal(getattr(spilled, name), getattr(in_memory, name)), name
    for name in ("src", "dst", "weight"):  # file-backed, so not in the process's own memory
        array = getattr(spilled, name)
        assert isinstance(array, np.memmap) and not array.flags.writeable, name
    assert list(tmp_path.iterdir()) == []  # nothing left behind, even while mapped
    # An unwritable spill directory keeps the edges in memory instead of failing.
    missing = build_graphs(returns, cfg, refresh=16, spill_dir=tmp_path / "missing")
    assert np.array_equal(missing.src, in_memory.src)


def test_top_k_is_the_graph_a_smaller_k_builds() -> None:
    rng = np.random.default_rng(13)
    returns = _factor_returns(90, 30, seed=13)
    returns[rng.random(returns.shape) < 0.05] = np.nan
    present = rng.random(returns.shape) > 0.05
    cfg = GraphConfig(window=25, k=9, threshold=0.05, min_periods=10)
    wide = build_graphs(returns, cfg, present=present)
    assert np.bincount(wide.dst).max() > 3 * 60  # some stocks do have more than 3 in-edges
    for k in (1, 3, 9):
        small = build_graphs(returns, GraphConfig(window=25, k=k, threshold=0.05,
                                                  min_periods=10), present=present)
        top = wide.top(k)
        for name in ("src", "dst", "weight", "offsets"):
            assert np.array_equal(getattr(top, name), getattr(small, name)), (k, name)
    assert wide.top(9) is wide and wide.top(50) is wide
    expected = [np.minimum(np.bincount(wide.edges(d)[1], minlength=30), 2).sum()
                for d in range(90)]
    assert list(wide.top(2).edges_per_date()) == expected
    with pytest.raises(ValueError, match="k must be >= 1"):
        wide.top(0)


def test_row_tiles_and_worker_threads_do_not_change_the_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from trainers.atft_gat import graph as graph_module

    returns = _factor_returns(80, 70, seed=14)
    returns[np.random.default_rng(14).random(returns.shape) < 0.03] = np.nan
    cfg = GraphConfig(window=20, k=5, threshold=0.1, min_periods=10)
    whole = build_graphs(returns, cfg)  # 70 stocks: one tile
    monkeypatch.setattr(graph_module, "TILE_ELEMENTS", 8 * 70)  # 9 tiles of <= 8 rows
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = build_graphs(returns, cfg)
        torch.set_num_threads(3)
        three = build_graphs(returns, cfg)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    for name in ("src", "dst", "weight", "offsets"):  # same tiles: bit for bit
        assert np.array_equal(getattr(one, name), getattr(three, name)), name
    for name in ("src", "dst", "offsets"):  # other tiles: matmuls may round differently
        assert np.array_equal(getattr(one, name), getattr(whole, name)), name
    np.testing.assert_allclose(one.weight, whole.weight, rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_build_matches_the_cpu() -> None:
    rng = np.random.default_rng(15)
    returns = _factor_returns(150, 300, seed=15)
    returns[rng.random(returns.shape) < 0.02] = np.nan
    cfg = GraphConfig(window=40, k=8, threshold=0.2, min_periods=20)
    cpu = build_graphs(returns, cfg)
    gpu = build_graphs(returns, cfg, device="cuda")
    assert len(cpu.src) > 150 * 100
    # Different kernels round differently, so near-ties may swap: compare edge sets.
    for d in range(0, 150, 7):
        a, b = _as_dict(cpu, d), _as_dict(gpu, d)
        assert len(a.keys() ^ b.keys()) <= 0.01 * max(1, len(a)), d
        for edge in a.keys() & b.keys():
            assert a[edge] == pytest.approx(b[edge], abs=1e-5)


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


# ---------------------------------------------------------------- the recipe's cached graph

GRAPH_TINY = dict(n_stocks=24, n_dates=140, graph_window=20, graph_k=3, graph_k_max=8,
                  lookback=10, purge=20, epochs=1)


def _recipe_inputs(tmp_path: Path, **overrides: object) -> tuple[object, object, TrainConfig]:
    from trainers.atft_gat import train as recipe

    config = TrainConfig(**{**GRAPH_TINY, **overrides})  # type: ignore[arg-type]
    fc = recipe.load_features(config, tmp_path / "cache")
    return fc, recipe.cache_panel(fc), config


def test_every_graph_k_reads_one_sidecar_built_for_graph_k_max(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainers.atft_gat import inputs as recipe

    fc, panel, config = _recipe_inputs(tmp_path, graph_k=8)
    built: list[int] = []

    def counting_build(*args: object, **kwargs: object) -> DateGraphs:
        built.append(args[1].k)  # type: ignore[attr-defined]
        return build_graphs(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(recipe, "build_graphs", counting_build)
    widest = recipe.load_graphs(fc, panel, config)
    assert built == [8]
    for k in (1, 3, 5, 8):  # a sampled graph_k reads the sidecar: no rebuild
        graphs = recipe.load_graphs(fc, panel, TrainConfig(**{**GRAPH_TINY, "graph_k": k}))
        top = widest.top(k)
        assert graphs.n_edges == len(top.src) and graphs.limit == k
        for d in range(graphs.n_dates):
            for a, b in zip(graphs.edges(d), top.edges(d), strict=True):
                assert np.array_equal(a, b), (k, d)
        assert isinstance(graphs.src, np.memmap)  # read from the mapped sidecar, not copied
    assert built == [8]
    # ... and equals what a build for that k alone gives.
    col = panel.feature_names.index(config.graph_source)
    returns = np.where(panel.present.numpy(), panel.x[:, :, col].numpy(), np.nan)
    direct = build_graphs(returns, GraphConfig(window=20, k=3), present=panel.present.numpy())
    three = recipe.load_graphs(fc, panel, TrainConfig(**GRAPH_TINY)).top(3)
    assert np.array_equal(three.src, direct.src) and np.array_equal(three.offsets, direct.offsets)
    # A different k_max is a different graph: built once more.
    recipe.load_graphs(fc, panel, TrainConfig(**{**GRAPH_TINY, "graph_k_max": 5}))
    assert built == [8, 5]


def test_graph_summary_counts_edges_per_date(tmp_path: Path) -> None:
    from trainers.atft_gat import train as recipe

    fc, panel, config = _recipe_inputs(tmp_path)
    graphs = recipe.load_graphs(fc, panel, config)
    summary = recipe.graph_summary(graphs, config)
    per_date = np.diff(graphs.top(config.graph_k).offsets)
    assert summary == {"k": 3, "k_max": 8, "edges_per_date_mean": round(per_date.mean(), 1),
                       "edges_per_date_min": 0, "edges_per_date_max": int(per_date.max()),
                       "dates_without_edges": int((per_date == 0).sum())}
    assert 0 < summary["dates_without_edges"] < 40  # only the first dates lack history
    assert summary["edges_per_date_max"] <= 3 * 24


def test_a_graph_without_edges_is_a_user_error(tmp_path: Path) -> None:
    from trainers.atft_gat import train as recipe

    fc, panel, config = _recipe_inputs(tmp_path, graph_threshold=1.0)
    with pytest.raises(UserError, match=r"the correlation graph has no edges on any of 140 "
                                        r"dates x 24 stocks .*lower graph_threshold"):
        recipe.load_graphs(fc, panel, config)
    off = TrainConfig(**{**GRAPH_TINY, "graph_threshold": 1.0, "use_graph": False})
    assert len(recipe.load_graphs(fc, panel, off).src) == 0  # no graph needed: no error


def test_graph_k_max_settings() -> None:
    assert TrainConfig(graph_k=10).effective_graph_k_max == GRAPH_K_MAX_DEFAULT == 20
    assert TrainConfig(graph_k=30).effective_graph_k_max == 30
    assert TrainConfig(graph_k=5, graph_k_max=12).effective_graph_k_max == 12
    with pytest.raises(UserError, match=r"graph_k_max=4: must be 0 .* or >= graph_k=10"):
        TrainConfig(graph_k=10, graph_k_max=4)


def test_prefix_reads_what_top_copies() -> None:
    """The lazy per-stock prefix (what a trial reads from the mapped sidecar) equals top(k),
    date by date, without copying the shared arrays."""
    rng = np.random.default_rng(5)
    returns = rng.standard_normal((90, 30)) * 0.01 + rng.standard_normal((90, 1)) * 0.01
    returns[rng.random(returns.shape) < 0.05] = np.nan
    graphs = build_graphs(returns, GraphConfig(window=20, k=8, threshold=0.0, min_periods=10))
    for k in (1, 3, 8, 12):
        lazy, copied = graphs.prefix(k), graphs.top(k)
        assert lazy.src is graphs.src  # nothing copied
        assert lazy.n_edges == len(copied.src)
        np.testing.assert_array_equal(lazy.edges_per_date(), copied.edges_per_date())
        for d in range(graphs.n_dates):
            for a, b in zip(lazy.edges(d), copied.edges(d), strict=True):
                np.testing.assert_array_equal(a, b)
    assert graphs.prefix(5).prefix(3).limit == 3 and graphs.prefix(3).prefix(5).limit == 3
