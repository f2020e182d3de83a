"""The metric registry: the lists every consumer reads, and that the metrics follow it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainers.metrics import SE_METRICS, panel_metrics, panel_metrics_with_se, registry


def _panel(n_dates: int = 60, n_stocks: int = 30) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    rng = np.random.default_rng(0)
    dates = np.repeat(np.arange(n_dates), n_stocks)
    codes = np.tile(np.arange(n_stocks), n_dates)
    signal = rng.standard_normal(len(dates))
    return (dates, signal + rng.standard_normal(len(dates)), 0.3 * signal), codes


def test_helpers_give_the_lists_the_service_used_before_the_registry() -> None:
    assert registry.reported() == ("sharpe", "rank_ic", "ic", "icir", "rank_icir", "hit_rate",
                                   "long_short_mean", "n_dates", "sharpe_net", "turnover")
    assert registry.table() == ("sharpe", "rank_ic", "sharpe_net", "turnover")
    assert list(registry.directions().items()) == [
        ("sharpe", "maximize"), ("rank_ic", "maximize"), ("ic", "maximize"),
        ("icir", "maximize"), ("rank_icir", "maximize"), ("hit_rate", "maximize"),
        ("long_short_mean", "maximize"), ("sharpe_net", "maximize"), ("turnover", "minimize")]
    assert registry.with_se() == ("sharpe", "rank_ic", "ic", "icir", "rank_icir", "sharpe_net",
                                  "turnover")
    assert set(SE_METRICS) == set(registry.with_se())
    assert registry.get("sharpe").has_se and not registry.get("hit_rate").has_se


def test_panel_metrics_has_one_key_per_registered_metric_in_registry_order() -> None:
    got = panel_metrics(*_panel()[0])
    assert tuple(got) == registry.names() == (
        "rank_ic", "ic", "icir", "rank_icir", "hit_rate", "sharpe", "long_short_mean", "n_dates",
        "sharpe_net", "turnover")


def test_a_standard_error_exactly_where_the_registry_gives_a_replicate() -> None:
    columns, codes = _panel()
    got = panel_metrics_with_se(*columns, codes=codes, n_boot=20)
    for name in registry.names():
        assert math.isfinite(got[name]["se"]) == registry.get(name).has_se, name


def test_bad_entries_and_unknown_names_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"metric 'x': direction must be one of .*'up'"):
        registry.Metric(name="x", direction="up", value=lambda s: 0.0)
    with pytest.raises(KeyError, match="registered: rank_ic, ic, icir"):
        registry.get("sortino")
