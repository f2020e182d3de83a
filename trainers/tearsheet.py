"""The held-out period's tear sheet of a ranking model, beside its baselines.

:func:`tear_sheet` takes prediction rows (``date, code, pred, target``) of the chosen model and
of each baseline on the same dates and writes, into one directory:

* ``tear_sheet_cumulative.png``: the compounded long-short equity ``prod(1 + r) - 1``, gross
  (solid) and net of ``cost_bps`` per unit traded (dashed), one line each (for an h-day target
  each date's h-day long-short is divided by h: the h staggered books of ``sharpe`` each hold
  1/h);
* ``tear_sheet_drawdown.png``: the net equity's drawdown from its running peak (underwater),
  each model, with its maximum drawdown in the legend;
* ``tear_sheet_rolling_sharpe.png``: the net long-short's Sharpe ratio over the trailing
  ``ROLLING_SHARPE_DATES`` dates, annualised, each model;
* ``tear_sheet_rank_ic.png``: the chosen model's per-date RankIC (bars) and its rolling mean,
  and the baselines' rolling means;
* ``tear_sheet_quantiles.png``: the mean **demeaned** target of each prediction quintile (per
  date the target minus that date's mean, as alphalens demeans: the market's drift removed,
  then averaged over dates): a model that ranks well rises from below 0 to above;
* ``tear_sheet_turnover.png``: the rolling mean of each model's turnover;
* ``tear_sheet_monthly.png``: the chosen model's net return of each calendar month,
  compounded within the month (as quantstats' monthly returns table), as a year x month
  heatmap;
* ``tear_sheet_ic_histogram.png``: the distribution of the chosen model's per-date RankIC,
  with its mean, SD and t-statistic;
* ``tear_sheet_ic_decay.png``: each model's mean RankIC against the scored-horizon return
  starting 0 to ``DECAY_LAGS`` dates later (alphalens' IC by holding period, read as decay),
  with two standard errors;
* ``tear_sheet.html``: the held-out report's own lines when given (validation beside test
  with standard errors, the deflated Sharpe ratio, the PBO, the test openings), a table of
  each model's figures (``panel_metrics``: Sharpe, net Sharpe, RankIC, turnover; and from the
  net returns, :func:`return_stats`: annual return (compounded), annual volatility, maximum
  drawdown) and the nine figures embedded, so the one file is the whole sheet (no network,
  nothing beside it needed).

Everything is drawn from the rows given with the same definitions as the metrics
(:mod:`trainers.metrics`): nothing here chooses anything.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from trainers.metrics.scoring import SCORING, Scoring

HTML_NAME = "tear_sheet.html"
PNG_NAMES = ("tear_sheet_cumulative.png", "tear_sheet_drawdown.png",
             "tear_sheet_rolling_sharpe.png", "tear_sheet_rank_ic.png",
             "tear_sheet_quantiles.png", "tear_sheet_turnover.png", "tear_sheet_monthly.png",
             "tear_sheet_ic_histogram.png", "tear_sheet_ic_decay.png")
# Lags (dates) of the RankIC decay chart: the return starting 0..DECAY_LAGS dates later.
DECAY_LAGS = 10
# Trailing window of the rolling Sharpe ratio: about a quarter of trading dates.
ROLLING_SHARPE_DATES = 63
# Rolling windows (in dates) of the RankIC and turnover lines: about a trading month.
ROLLING_DATES = 20
N_QUANTILES = 5
TABLE = ("sharpe", "sharpe_net", "rank_ic", "turnover")
# From the net returns (return_stats), after TABLE's columns.
RETURN_STATS = ("annual_return", "annual_volatility", "max_drawdown")
DPI = 90


def quantile_returns(frame: pl.DataFrame, n_quantiles: int = N_QUANTILES,
                     min_stocks: int = 5) -> np.ndarray:
    """(n_quantiles,) mean demeaned target of each prediction quantile: per date (dates with
    at least ``min_stocks`` finite rows; ties broken by row order) the target minus the date's
    mean, averaged in each quantile, then the mean over dates."""
    rows = frame.filter(pl.col("pred").is_finite() & pl.col("target").is_finite())
    rows = rows.with_columns(n=pl.len().over("date")).filter(pl.col("n") >= min_stocks)
    if rows.height == 0:
        return np.full(n_quantiles, np.nan)
    rank = pl.col("pred").rank("ordinal").over("date") - 1
    bucket = (rank * n_quantiles // pl.col("n")).alias("q")
    demeaned = (pl.col("target") - pl.col("target").mean().over("date")).alias("target")
    per_date = rows.with_columns(bucket, demeaned).group_by("date", "q").agg(
        pl.col("target").mean())
    means = per_date.group_by("q").agg(pl.col("target").mean()).sort("q")
    out = np.full(n_quantiles, np.nan)
    out[means["q"].to_numpy().astype(int)] = means["target"].to_numpy()
    return out


def return_stats(returns: np.ndarray, periods_per_year: float) -> dict[str, float]:
    """Annual return (compounded: ``prod(1 + r) ** (periods_per_year / n) - 1``), annual
    volatility (``std(r, ddof=1) * sqrt(periods_per_year)``) and maximum drawdown (the
    largest fall of the equity ``prod(1 + r)`` from its running peak, as a negative fraction)
    of per-period returns ``r`` (NaN periods count as 0: no position)."""
    r = np.nan_to_num(np.asarray(returns, dtype=np.float64))
    if len(r) < 2:
        return dict.fromkeys(RETURN_STATS, float("nan"))
    equity = np.cumprod(1.0 + r)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    return {"annual_return": float(equity[-1] ** (periods_per_year / len(r)) - 1.0),
            "annual_volatility": float(r.std(ddof=1) * np.sqrt(periods_per_year)),
            "max_drawdown": float((equity / peak - 1.0).min())}


def monthly_returns(dates: np.ndarray, returns: np.ndarray) -> pl.DataFrame:
    """``year, month, ret``: each calendar month's return compounded from per-date returns
    (``prod(1 + r) - 1``; NaN dates count as 0), in calendar order."""
    frame = pl.DataFrame({"date": np.asarray(dates).astype("datetime64[D]"),
                          "r": np.nan_to_num(np.asarray(returns, dtype=np.float64))})
    return (frame.group_by(pl.col("date").dt.year().alias("year"),
                           pl.col("date").dt.month().alias("month"))
            .agg(((pl.col("r") + 1.0).product() - 1.0).alias("ret"))
            .sort("year", "month"))


def ic_decay(frame: pl.DataFrame, lags: int = DECAY_LAGS) -> tuple[np.ndarray, np.ndarray]:
    """(mean, standard error) over dates of the RankIC between each date's predictions and the
    target of the same stocks ``k`` dates later, for k = 0..``lags`` (dates of the frame's
    own calendar; the standard error treats dates as independent)."""
    from trainers.metrics import per_date_metrics

    days = frame["date"].unique().sort()
    index = pl.DataFrame({"date": days, "i": np.arange(len(days))})
    rows = frame.select("date", "code", "pred", "target").join(index, on="date")
    mean, se = np.full(lags + 1, np.nan), np.full(lags + 1, np.nan)
    for k in range(lags + 1):
        later = rows.select("code", (pl.col("i") - k).alias("i"),
                            pl.col("target").alias("later"))
        pairs = rows.join(later, on=["code", "i"]).sort("date", "code")
        if not pairs.height:
            continue
        ic = per_date_metrics(pairs["date"].to_numpy(), pairs["pred"].to_numpy(),
                              pairs["later"].to_numpy())["rank_ic"].to_numpy()
        ic = ic[np.isfinite(ic)]
        if len(ic) > 1:
            mean[k], se[k] = ic.mean(), ic.std(ddof=1) / np.sqrt(len(ic))
    return mean, se


def _net_returns(per_date: pl.DataFrame, horizon: int) -> np.ndarray:
    """Each date's net long-short as the book's return that date (an h-day return / h)."""
    return per_date["long_short_net"].to_numpy() / horizon


def _drawdown(returns: np.ndarray) -> np.ndarray:
    equity = np.cumprod(1.0 + np.nan_to_num(returns))
    return equity / np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:] - 1.0


def rolling_window(n_dates: int) -> int:
    """The rolling Sharpe's window: ``ROLLING_SHARPE_DATES``, shortened to half the period
    (at least 5 dates) when the period is shorter than two windows."""
    return min(ROLLING_SHARPE_DATES, max(5, n_dates // 2))


def _rolling_sharpe(returns: np.ndarray, window: int, periods_per_year: float) -> np.ndarray:
    r = np.nan_to_num(returns)
    out = np.full(len(r), np.nan)
    for i in range(window - 1, len(r)):
        part = r[i - window + 1:i + 1]
        sd = part.std(ddof=1)
        out[i] = part.mean() / sd * np.sqrt(periods_per_year) if sd > 0 else np.nan
    return out


def _per_date(frame: pl.DataFrame, scoring: Scoring) -> pl.DataFrame:
    from trainers.metrics import per_date_metrics

    return per_date_metrics(frame["date"].to_numpy(), frame["pred"].to_numpy(),
                            frame["target"].to_numpy(), codes=frame["code"].to_numpy(),
                            scoring=scoring)


def _rolling(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the finite values of the last ``window`` entries."""
    finite = np.isfinite(values)
    total = np.cumsum(np.where(finite, values, 0.0))
    count = np.cumsum(finite)
    total[window:] = total[window:] - total[:-window]
    count[window:] = count[window:] - count[:-window]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _dates_axis(ax: Any) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def _dated_chart(fig: Any, ax: Any, *, ylabel: str, title: str, ncol: int = 1) -> bytes:
    """A chart over dates, finished the one way every chart of the sheet is: labels, legend,
    grid, PNG bytes."""
    _dates_axis(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=ncol)
    ax.grid(alpha=0.3)
    return _png(fig)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, format="png", metadata={"Software": None})
    return buf.getvalue()


def _figures(series: Mapping[str, pl.DataFrame], quantiles: Mapping[str, np.ndarray],
             decay: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
             scoring: Scoring, title: str) -> list[bytes]:
    from matplotlib.figure import Figure

    horizon, cost_bps = scoring.horizon, scoring.cost_bps
    periods_per_year = scoring.periods_per_year

    colors = [f"C{i}" for i in range(len(series))]
    out = []
    fig = Figure(figsize=(8.0, 3.6), layout="constrained")
    ax = fig.subplots()
    for (label, pd), color in zip(series.items(), colors, strict=True):
        dates = pd["date"].to_numpy()
        for column, style, suffix in (("long_short", "-", "gross"),
                                      ("long_short_net", "--", "net")):
            ret = np.nan_to_num(pd[column].to_numpy() / horizon)
            ax.plot(dates, np.cumprod(1.0 + ret) - 1.0, style, color=color,
                    label=f"{label}, {suffix}")
    ax.axhline(0.0, color="0.6", lw=0.8)
    out.append(_dated_chart(
        fig, ax, ylabel="compounded long-short return", ncol=2,
        title=f"{title}: compounded long-short, gross and net of {cost_bps:g} bps"))

    fig = Figure(figsize=(8.0, 3.0), layout="constrained")
    ax = fig.subplots()
    for (label, pd), color in zip(series.items(), colors, strict=True):
        dd = _drawdown(_net_returns(pd, horizon))
        worst = float(dd.min()) if len(dd) else 0.0
        ax.fill_between(pd["date"].to_numpy(), dd, 0.0, color=color, alpha=0.2, lw=0)
        ax.plot(pd["date"].to_numpy(), dd, color=color, lw=0.8,
                label=f"{label} (max {worst:.1%})")
    out.append(_dated_chart(fig, ax, ylabel="drawdown (net)",
                            title=f"{title}: net drawdown from the running peak"))

    fig = Figure(figsize=(8.0, 3.0), layout="constrained")
    ax = fig.subplots()
    window = rolling_window(max(len(pd) for pd in series.values()))
    for (label, pd), color in zip(series.items(), colors, strict=True):
        ax.plot(pd["date"].to_numpy(),
                _rolling_sharpe(_net_returns(pd, horizon), window, periods_per_year),
                color=color, label=label)
    ax.axhline(0.0, color="0.4", lw=0.8)
    out.append(_dated_chart(fig, ax, ylabel=f"Sharpe, trailing {window} dates",
                            title=f"{title}: rolling net Sharpe ratio (annualised)"))

    fig = Figure(figsize=(8.0, 3.6), layout="constrained")
    ax = fig.subplots()
    first = next(iter(series))
    chosen = series[first]
    ax.bar(chosen["date"].to_numpy(), np.nan_to_num(chosen["rank_ic"].to_numpy()),
           color="0.75", width=1.0, label=f"{first}, per date")
    for (label, pd), color in zip(series.items(), colors, strict=True):
        ax.plot(pd["date"].to_numpy(), _rolling(pd["rank_ic"].to_numpy(), ROLLING_DATES),
                color=color, label=f"{label}, {ROLLING_DATES}-date mean")
    ax.axhline(0.0, color="0.4", lw=0.8)
    out.append(_dated_chart(fig, ax, ylabel="RankIC", title=f"{title}: per-date RankIC"))

    fig = Figure(figsize=(8.0, 3.6), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(quantiles)
    x = np.arange(N_QUANTILES)
    for i, ((label, q), color) in enumerate(zip(quantiles.items(), colors, strict=True)):
        ax.bar(x + (i - (len(quantiles) - 1) / 2) * width, np.nan_to_num(q), width,
               color=color, label=label)
    ax.set_xticks(x, [f"Q{i + 1}" for i in x])
    ax.axhline(0.0, color="0.4", lw=0.8)
    ax.set_xlabel("prediction quintile (Q1 lowest)")
    ax.set_ylabel("mean target minus the date's mean")
    ax.set_title(f"{title}: demeaned target by prediction quintile")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    out.append(_png(fig))

    fig = Figure(figsize=(8.0, 3.0), layout="constrained")
    ax = fig.subplots()
    for (label, pd), color in zip(series.items(), colors, strict=True):
        ax.plot(pd["date"].to_numpy(), _rolling(pd["turnover"].to_numpy(), ROLLING_DATES),
                color=color, label=label)
    ax.set_ylim(0.0, 4.0)
    out.append(_dated_chart(fig, ax, ylabel=f"turnover ({ROLLING_DATES}-date mean)",
                            title=f"{title}: weight traded per rebalance (0 to 4)"))
    out.append(_monthly_chart(chosen, first, horizon=horizon, title=title))
    out.append(_ic_histogram(chosen["rank_ic"].to_numpy(), first, title=title))
    out.append(_decay_chart(decay, colors, title=title))
    return out


def _monthly_chart(per_date: pl.DataFrame, label: str, *, horizon: int, title: str) -> bytes:
    from matplotlib.figure import Figure

    months = monthly_returns(per_date["date"].to_numpy(), _net_returns(per_date, horizon))
    years = sorted(set(months["year"].to_list()))
    grid = np.full((len(years), 12), np.nan)
    for y, m, r in months.iter_rows():
        grid[years.index(y), m - 1] = r
    fig = Figure(figsize=(8.0, 1.2 + 0.45 * len(years)), layout="constrained")
    ax = fig.subplots()
    limit = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    ax.imshow(grid, cmap="RdYlGn", vmin=-limit, vmax=limit, aspect="auto")
    for (i, j), r in np.ndenumerate(grid):
        if np.isfinite(r):
            ax.text(j, i, f"{r:.1%}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(12), ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep",
                              "Oct", "Nov", "Dec"])
    ax.set_yticks(range(len(years)), [str(y) for y in years])
    ax.set_title(f"{title}: {label}, net return by month (compounded)")
    return _png(fig)


def _ic_histogram(ic: np.ndarray, label: str, *, title: str) -> bytes:
    from matplotlib.figure import Figure

    ic = ic[np.isfinite(ic)]
    fig = Figure(figsize=(8.0, 3.0), layout="constrained")
    ax = fig.subplots()
    if len(ic) > 1:
        sd = ic.std(ddof=1)
        t = ic.mean() / sd * np.sqrt(len(ic)) if sd > 0 else float("nan")
        ax.hist(ic, bins=min(40, max(5, len(ic) // 4)), color="C0", alpha=0.7)
        ax.axvline(ic.mean(), color="C3", lw=1.2,
                   label=f"mean {ic.mean():+.4f}, SD {sd:.4f}, t {t:.2f} ({len(ic)} dates)")
        ax.legend(fontsize=7)
    ax.axvline(0.0, color="0.4", lw=0.8)
    ax.set_xlabel("RankIC of a date")
    ax.set_ylabel("dates")
    ax.set_title(f"{title}: {label}, distribution of the per-date RankIC")
    return _png(fig)


def _decay_chart(decay: Mapping[str, tuple[np.ndarray, np.ndarray]], colors: list[str], *,
                 title: str) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 3.0), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(decay), 1)
    for i, ((label, (mean, se)), color) in enumerate(zip(decay.items(), colors, strict=True)):
        x = np.arange(len(mean)) + (i - (len(decay) - 1) / 2) * width
        ax.bar(x, np.nan_to_num(mean), width, yerr=2 * np.nan_to_num(se), color=color,
               label=label, capsize=2)
    ax.axhline(0.0, color="0.4", lw=0.8)
    ax.set_xlabel("dates between the prediction and the start of the return")
    ax.set_ylabel("mean RankIC (± 2 SE)")
    ax.set_title(f"{title}: RankIC as the signal ages")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def _book_words(book: Any) -> str:
    words = f"top {book.enter:.0%} minus bottom {book.enter:.0%} by prediction"
    if book.exit != book.enter:
        words += f", held while in the top/bottom {book.exit:.0%}"
    if book.halflife:
        words += f", scores smoothed with a {book.halflife:g}-date half-life"
    return words


def _html(title: str, figures: Mapping[str, Mapping[str, float]], pngs: list[bytes], *,
          scoring: Scoring, dates: str, report_lines: Sequence[str] = ()) -> str:
    horizon, cost_bps, book = scoring.horizon, scoring.cost_bps, scoring.book
    periods_per_year = scoring.periods_per_year

    def cell(v: float) -> str:
        return f"{v:.4g}" if isinstance(v, float) and np.isfinite(v) else "-"

    head = "".join(f"<th>{html.escape(n)}</th>" for n in (*TABLE, *RETURN_STATS))
    rows = "".join(f"<tr><td>{html.escape(label)}</td>"
                   + "".join(f"<td>{cell(f.get(n))}</td>" for n in (*TABLE, *RETURN_STATS))
                   + "</tr>" for label, f in figures.items())
    captions = (f"Compounded long-short return ({_book_words(book)}), gross "
                f"and net of {cost_bps:g} bps per unit traded",
                "Net drawdown from the running peak (underwater)",
                f"Net Sharpe ratio over the trailing {ROLLING_SHARPE_DATES} dates (half the "
                "period when shorter), annualised",
                f"Per-date RankIC and its {ROLLING_DATES}-date trailing mean",
                "Mean demeaned target of each prediction quintile",
                f"Turnover: weight traded per rebalance, {ROLLING_DATES}-date trailing mean",
                "Net return of each calendar month, compounded within the month",
                "Distribution of the per-date RankIC",
                f"Mean RankIC against the return starting 0 to {DECAY_LAGS} dates later, "
                "with two standard errors (the signal's decay)")
    images = "".join(
        f'<figure><img alt="{html.escape(c)}" src="data:image/png;base64,'
        f'{base64.b64encode(p).decode()}"><figcaption>{html.escape(c)}</figcaption></figure>'
        for c, p in zip(captions, pngs, strict=True))
    report = ("<h2>The held-out report</h2><p>Validation (what the study selected on) beside "
              "test, ± standard errors; the deflated Sharpe ratio, the probability of backtest "
              "overfitting and the test openings, as the console printed them:</p><pre>"
              + html.escape("\n".join(report_lines)) + "</pre>") if report_lines else ""
    note = (f"Test dates {html.escape(dates)}; {horizon}-date target; Sharpe ratios annualised "
            f"with {periods_per_year:g} periods a year; costs {cost_bps:g} bps per unit traded. "
            "These are held-out figures: nothing was chosen on these dates.")
    return ("<!doctype html><html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;"
            "margin:2em;max-width:60em}table{border-collapse:collapse}td,th{border:1px solid "
            "#ccc;padding:.3em .6em;text-align:right}td:first-child{text-align:left}"
            "img{max-width:100%}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{note}</p>{report}<h2>Figures</h2><table>"
            f"<tr><th></th>{head}</tr>{rows}</table><h2>Charts</h2>{images}</body></html>\n")


def tear_sheet(frames: Mapping[str, pl.DataFrame], out_dir: Path, *, title: str,
               scoring: Scoring = SCORING,
               report_lines: Sequence[str] = ()) -> list[Path]:
    """Write the tear sheet of ``frames`` (label -> rows; the first is the model, the others
    its baselines, on the same dates) into ``out_dir``; returns the HTML file and the PNGs.
    ``report_lines``: the held-out report's text, shown above the figures. Each file is
    replaced atomically."""
    from trainers.context import atomic_write_bytes
    from trainers.metrics import panel_metrics

    if not frames:
        raise ValueError("tear_sheet needs at least one frame of prediction rows")
    series = {label: _per_date(f, scoring) for label, f in frames.items()}
    quantiles = {label: quantile_returns(f) for label, f in frames.items()}
    figures = {label: panel_metrics(f["date"].to_numpy(), f["pred"].to_numpy(),
                                    f["target"].to_numpy(), codes=f["code"].to_numpy(),
                                    scoring=scoring)
               for label, f in frames.items()}
    for label, per_date in series.items():
        figures[label] = {**figures[label],
                          **return_stats(_net_returns(per_date, scoring.horizon),
                                         scoring.periods_per_year)}
    decay = {label: ic_decay(f) for label, f in frames.items()}
    pngs = _figures(series, quantiles, decay, scoring=scoring, title=title)
    first = next(iter(frames.values()))["date"]
    dates = f"{first.min()} to {first.max()}"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in zip(PNG_NAMES, pngs, strict=True):
        atomic_write_bytes(out_dir / name, data, durable=False)
        paths.append(out_dir / name)
    page = _html(title, figures, pngs, scoring=scoring, dates=dates,
                 report_lines=report_lines)
    atomic_write_bytes(out_dir / HTML_NAME, page.encode(), durable=False)
    return [out_dir / HTML_NAME, *paths]
