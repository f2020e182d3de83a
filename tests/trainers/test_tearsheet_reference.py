"""The tear sheet's figures against the libraries a quant checks them with, where those define
the same figure: quantstats (annual return, volatility, maximum drawdown, the drawdown series,
monthly returns, rolling Sharpe) and alphalens (per-date IC, demeaned quantile returns).

Neither library is a dependency of the service (they pull pandas, yfinance, statsmodels and
IPython): ``make test-reference`` installs them and runs this file; without them it skips.
"""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import pytest

from trainers.metrics import per_date_metrics
from trainers.tearsheet import (
    _drawdown,
    _rolling_sharpe,
    monthly_returns,
    quantile_returns,
    return_stats,
)

qs = pytest.importorskip("quantstats", reason="make test-reference installs quantstats")
al = pytest.importorskip("alphalens", reason="make test-reference installs alphalens")
pd = pytest.importorskip("pandas")

PERIODS = 252


def _returns(seed: int, n: int = 400, first: float | None = None) -> pd.Series:
    rng = np.random.default_rng(seed)
    r = rng.normal(0.0004, 0.01, n)
    if first is not None:
        r[0] = first  # a loss on the first date: the drawdown counts from the start
    days = pd.bdate_range("2021-01-04", periods=n)
    return pd.Series(r, index=days)


@pytest.mark.parametrize("first", [None, -0.03])
def test_return_figures_equal_quantstats(first: float | None) -> None:
    r = _returns(3, first=first)
    ours = return_stats(r.to_numpy(), PERIODS)
    assert ours["annual_return"] == pytest.approx(qs.stats.cagr(r, periods=PERIODS), rel=1e-10)
    assert ours["annual_volatility"] == pytest.approx(
        qs.stats.volatility(r, periods=PERIODS), rel=1e-10)
    assert ours["max_drawdown"] == pytest.approx(qs.stats.max_drawdown(r), rel=1e-10)
    np.testing.assert_allclose(_drawdown(r.to_numpy()),
                               qs.stats.to_drawdown_series(r).to_numpy(), atol=1e-12)


def test_monthly_returns_equal_quantstats() -> None:
    r = _returns(4, n=300)
    ours = monthly_returns(r.index.to_numpy(), r.to_numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = qs.stats.monthly_returns(r, eoy=False, compounded=True)
    theirs = {(int(year), month): float(table.loc[year].iloc[month - 1])
              for year in table.index for month in range(1, 13)
              if float(table.loc[year].iloc[month - 1]) != 0.0}
    assert len(theirs) == ours.height
    for row in ours.iter_rows(named=True):
        assert row["ret"] == pytest.approx(theirs[(row["year"], row["month"])], rel=1e-10)


def test_rolling_sharpe_equals_quantstats() -> None:
    r = _returns(5, n=200)
    ours = _rolling_sharpe(r.to_numpy(), 63, PERIODS)
    theirs = qs.stats.rolling_sharpe(r, rolling_period=63, periods_per_year=PERIODS).to_numpy()
    assert np.isnan(ours[:62]).all() and np.isnan(theirs[:62]).all()
    np.testing.assert_allclose(ours[62:], theirs[62:], rtol=1e-10)


def _factor_data(seed: int = 6, n_dates: int = 60, n_stocks: int = 50
                 ) -> tuple[pl.DataFrame, pd.DataFrame]:
    """Predictions with some skill and their next returns, as our rows and as alphalens'
    ``factor_data`` (quintiles from ``alphalens.utils.quantize_factor``)."""
    rng = np.random.default_rng(seed)
    days = pd.bdate_range("2022-01-03", periods=n_dates)
    codes = [f"S{i:03d}" for i in range(n_stocks)]
    pred = rng.standard_normal((n_dates, n_stocks))
    target = 0.01 * (0.1 * pred + rng.standard_normal((n_dates, n_stocks))) + 0.002
    rows = pl.DataFrame({"date": np.repeat(days.to_numpy().astype("datetime64[D]"), n_stocks),
                         "code": np.tile(codes, n_dates), "pred": pred.ravel(),
                         "target": target.ravel()})
    index = pd.MultiIndex.from_product([days, codes], names=["date", "asset"])
    data = pd.DataFrame({"1D": target.ravel(), "factor": pred.ravel()}, index=index)
    data["factor_quantile"] = al.utils.quantize_factor(data, quantiles=5)
    return rows, data


def test_information_coefficient_equals_alphalens() -> None:
    rows, data = _factor_data()
    ours = per_date_metrics(rows["date"].to_numpy(), rows["pred"].to_numpy(),
                            rows["target"].to_numpy())["rank_ic"].to_numpy()
    theirs = al.performance.factor_information_coefficient(data)["1D"].to_numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_demeaned_quantile_returns_equal_alphalens() -> None:
    rows, data = _factor_data()
    ours = quantile_returns(rows)
    mean, _ = al.performance.mean_return_by_quantile(data, demeaned=True)
    np.testing.assert_allclose(ours, mean["1D"].to_numpy(), atol=1e-12)
    assert abs(ours.sum()) < 1e-12  # demeaned: the market's drift is gone
