"""ATFT-GAT-FAN's study-file writer for a user's panel (``Workload.init_study``, behind
``python -m hpo.init``): every problem of the panel at once, else a commented study file that
runs on it. See ``hpo.init`` for what is checked and written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from trainers.errors import UserError

TARGET = re.compile(r"ret_(\d+)d")
DATE_LIKE = ("date", "datetime", "day", "time", "timestamp", "trade_date", "asof")
CODE_LIKE = ("code", "ticker", "symbol", "permno", "secid", "isin", "cusip", "asset", "id")
# The split needs room for training, a purge, validation, a purge and test: fewer dates than
# this leave too little of each (and the leak guard and the graph need their windows).
MIN_DATES = 120
# A feature equal to the previous date's ret_1d on this share of rows is the realised past
# return the correlation graph is built from.
SAME_AS_PAST = 0.99


def _read(path: Path) -> Any:
    import polars as pl

    if not path.is_file():
        raise UserError(f"--panel {path} does not exist")
    try:
        if path.suffix.lower() in (".csv", ".txt") or path.name.lower().endswith(".csv.gz"):
            return pl.read_csv(path, infer_schema_length=10_000)
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise UserError(f"cannot read --panel {path}: {str(exc).splitlines()[0]}") from None


def _looks_like(columns: list[str], names: tuple[str, ...]) -> list[str]:
    return [c for c in columns if c.lower() in names or c.lower().rstrip("s") in names]


def inspect_panel(path: Path) -> tuple[dict[str, Any], list[str]]:
    """What the study file needs from the panel, and every problem found (module docstring)."""
    import polars as pl

    frame = _read(path)
    columns = list(frame.columns)
    problems: list[str] = []
    mapped: dict[str, str] = {}
    for key, like in (("date", DATE_LIKE), ("code", CODE_LIKE)):
        if key not in columns:
            guess = [c for c in _looks_like(columns, like) if c != key]
            if guess:  # the study file names it: [data] date_column / code_column
                mapped[guess[0]] = key
            else:
                problems.append(f"no {key!r} column (add one, or name yours in the study "
                                f"file's [data] {key}_column); columns: {', '.join(columns)}")
    frame = frame.rename(mapped)
    columns = list(frame.columns)
    keys = {"date", "code"}
    targets = sorted((int(m.group(1)), c) for c in columns if (m := TARGET.fullmatch(c)))
    features = [c for c in columns if c not in keys and not TARGET.fullmatch(c)
                and not c.startswith("fwd_")]
    if not targets:
        problems.append("no target column ret_<h>d: add each stock's forward return from the "
                        "close of the date to h dates later as ret_1d, ret_5d, ...")
    for h, name in targets:
        if frame[name].null_count() == frame.height:
            problems.append(f"target {name} is empty: fill it, or drop it (horizon {h})")
    wrong = [f"{c} ({frame.schema[c]})" for c in features if not frame.schema[c].is_numeric()]
    if wrong:
        problems.append(f"non-numeric feature column(s) {', '.join(wrong)}: convert them to "
                        "numbers or drop them")
    info: dict[str, Any] = {"path": path, "rows": frame.height, "targets": targets,
                            "key_columns": {key: name for name, key in mapped.items()},
                            "features": [c for c in features
                                         if frame.schema[c].is_numeric()]}
    if "date" in columns:
        dates = frame["date"]
        if dates.dtype == pl.Utf8:
            dates = dates.str.to_date(strict=False)
        elif dates.dtype != pl.Date:
            dates = dates.cast(pl.Date, strict=False)
        bad = dates.null_count() - frame["date"].null_count()
        if bad or frame["date"].null_count():
            problems.append(f"{bad + frame['date'].null_count()} date value(s) are not dates "
                            "(use ISO YYYY-MM-DD)")
        frame = frame.with_columns(dates.alias("date"))
        n_dates = frame["date"].n_unique()
        info["n_dates"] = n_dates
        if n_dates < MIN_DATES:
            problems.append(f"{n_dates} dates are too few for train | validation | test "
                            f"periods: at least {MIN_DATES}")
        if "code" in columns:
            dup = frame.height - frame.select("date", "code").unique().height
            if dup:
                problems.append(f"{dup} duplicated (date, code) row(s): keep one row per stock "
                                "and date")
            info["n_stocks"] = frame["code"].n_unique()
            if not problems:
                info["graph_source"] = _graph_source(frame, info["features"], targets)
                if info["graph_source"] is None:
                    problems.append(
                        "no feature of realised past returns for the correlation graph (one "
                        "equal to each stock's previous-date ret_1d, e.g. f_ret_1d_past): add "
                        "it, or set use_graph = false in the study file")
    return info, problems


def _graph_source(frame: Any, features: list[str], targets: list[tuple[int, str]]
                  ) -> str | None:
    """The feature that is each stock's previous-date ``ret_1d`` (checked on the rows), else
    one named like a past 1-day return."""
    import polars as pl

    if any(name == "ret_1d" for _, name in targets):
        past = frame.sort("code", "date").with_columns(
            pl.col("ret_1d").shift(1).over("code").alias("__past"))
        for c in features:
            both = past.select(pl.col(c).cast(pl.Float64), "__past").drop_nulls()
            if both.height and (((both[c] - both["__past"]).abs() <= 1e-9 * (1 + both["__past"]
                                 .abs())).mean() or 0.0) >= SAME_AS_PAST:
                return c
    named = [c for c in features if re.search(r"ret_?1d.*past|past.*ret_?1d|ret_1d_lag", c)]
    return named[0] if named else None


def _key_lines(info: dict[str, Any]) -> str:
    """``[data]`` lines naming the panel's own key columns (none when they are date, code)."""
    return "".join(f'{key}_column = "{name}"{" " * max(1, 22 - len(key) - len(name))}'
                   f"# the panel's {key} column\n"
                   for key, name in sorted(info.get("key_columns", {}).items()))


def study_text(info: dict[str, Any], *, name: str) -> str:
    """The commented study file for ``info`` (``inspect_panel``'s)."""
    horizons = [h for h, _ in info["targets"]]
    lag = 1
    purge = max(horizons) + lag
    usable = info["n_dates"] - max(horizons) - lag
    # About a year of validation dates where the panel has them, at least 20 % of it.
    val_fraction = round(min(0.3, max(0.2, 250 / max(usable, 1))), 2)
    stocks = info.get("n_stocks", 100)
    batch = max(64, min(4096, 4 * stocks))
    names = ", ".join(n for _, n in info["targets"])
    return f'''# Written by python -m hpo.init from {info["path"]} ({info["rows"]:,} rows, \
{info["n_dates"]} dates, {stocks} stocks). Edit freely; `python -m hpo.run --study <this file>`.
name = "{name}"
description = "ATFT-GAT-FAN on {Path(info["path"]).name}, selected net of 5 bps"
workload = "atft_gat"
n_trials = 20
timeout_s = 0

# Selected on the long-short Sharpe ratio net of costs (cost_bps below), then RankIC.
[[objectives]]
metric = "sharpe_net"
direction = "maximize"

[[objectives]]
metric = "rank_ic"
direction = "maximize"

[sampler]
name = "tpe"
seed = 0
n_startup_trials = 6

[data]
source = "{Path(info["path"]).as_posix()}"
{_key_lines(info)}horizons = {horizons}             # from the panel's targets: {names}
metric_horizon = {min(horizons)}          # the horizon the figures trade
execution_lag = {lag}            # features of the close of t trade from t + 1
purge = {purge}                    # >= longest horizon + lag: no training label reaches validation
graph_source = "{info["graph_source"]}"  # realised past returns, for the correlation graph
val_fraction = {val_fraction}
test_fraction = 0.2            # never read by a trial; hpo.evaluate opens it once

[portfolio]                    # docs/workloads.md "The book: turnover control"
cost_bps = [5, 0, 10, 20]      # the first is charged; the report shows each and the break-even

[trainer]                      # a CPU-sized preset: raise epochs and max_steps_per_epoch on a GPU
epochs = 2
phases = ["baseline:1", "graph:1"]
max_steps_per_epoch = 20       # 0 = every training date once per epoch
batch_size = {batch}
hidden_size = 32
lookback = 20
warmup_steps = 5

[search_space.lr]
type = "float"
low = 3e-4
high = 3e-3
log = true

[search_space.dropout]
type = "float"
low = 0.0
high = 0.3

[search_space.rank_weight]
type = "float"
low = 0.0
high = 1.0

[search_space.exit]            # hold band of the book (enter = 0.2)
type = "float"
low = 0.2
high = 0.4

[search_space.score_halflife]  # smoothing of the scores, in dates
type = "float"
low = 0.0
high = 10.0
'''




def init_study(panel: Path, name: str) -> str:
    """The study file's text for ``panel``; a one-line ``UserError`` listing every problem."""
    info, problems = inspect_panel(panel)
    if problems:
        raise UserError(f"panel {panel}: {len(problems)} problem(s): " + "; ".join(problems))
    return study_text(info, name=name)
