"""Score a panel the study never saw with a trained ATFT-GAT-FAN model: the daily signal.

``score_panel(trained, source, dates=...)`` runs exactly the pipeline training used, on the
user's panel (parquet or CSV, the schema of "Your own panel"; target columns may be absent,
today's rows have no future yet):

1. the panel's columns must be the model's features (the names saved in ``model.pt``): a
   missing, extra, renamed or non-numeric feature is refused in one line listing the
   difference, before anything is read or written;
2. only the dates it needs are read: the requested dates and the history before them that the
   windows (``lookback``) and the correlation graph (``graph_window``) read, started on a
   multiple of the graph's refresh period a window before the first scored date's refresh
   block (so a date's graph is the one the whole panel gives, bit for bit: its running sums
   are recomputed at the same dates from the same rows);
3. those rows go through the feature cache (same spec: feature order, NaN policy, missing
   indicators), the windows are standardised with the **saved** training statistics, the
   graph is built from the panel's own past returns, and the model predicts in eval mode.

A requested date without enough history before it is skipped and named; a panel too short for
any is refused.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cache import CacheSpec
from trainers.errors import UserError

TARGET = re.compile(r"ret_(\d+)d")
DATE, CODE = "date", "code"


@dataclass(frozen=True)
class Scored:
    """Scores of the requested dates: ``date, code, score`` rows, the dates skipped for lack
    of history, and the calendar the request resolved against."""

    frame: pl.DataFrame
    skipped: list[str]
    dates: list[str]
    panel: Any = None  # the lagged panel the scores came from (its raw features, targets)
    wanted: Any = None  # the scored dates' indices into ``panel``


def _is_csv(source: str) -> bool:
    name = Path(source).name.lower()
    return name.endswith((".csv", ".txt", ".csv.gz"))


def _read(source: str, columns: list[str], keys: dict[str, str] | None = None,
          since: Any = None) -> pl.DataFrame:
    """``columns`` of the panel (key names ``date``/``code``; ``keys`` maps the panel's own
    names of the key columns to them), the rows dated ``since`` or later when given (a
    parquet file is scanned: row groups wholly before ``since`` are skipped)."""
    path = Path(source)
    back = {key: name for name, key in (keys or {}).items()}
    named = [back.get(c, c) for c in columns]
    try:
        if _is_csv(source):
            frame = pl.read_csv(path, columns=named, infer_schema_length=10_000,
                                schema_overrides={back.get(CODE, CODE): pl.Utf8}
                                if CODE in columns else None)
        else:
            lazy = pl.scan_parquet(path).select(named)
            if since is not None:
                column = pl.col(back.get(DATE, DATE))
                kind = pl.read_parquet_schema(path)[back.get(DATE, DATE)]
                bound = (pl.lit(since) if kind == pl.Date else
                         pl.lit(since.isoformat()) if kind == pl.Utf8 else None)
                if bound is not None:  # other types are filtered once parsed, below
                    lazy = lazy.filter(column >= bound)
            frame = lazy.collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise UserError(f"cannot read panel {source}: {str(exc).splitlines()[0]}") from None
    frame = frame.rename(keys or {}, strict=False)
    if frame.schema[DATE] == pl.Utf8:
        frame = frame.with_columns(pl.col(DATE).str.to_date(strict=False))
    elif frame.schema[DATE] != pl.Date:
        frame = frame.with_columns(pl.col(DATE).cast(pl.Date, strict=False))
    if frame[DATE].null_count():
        raise UserError(f"panel {source}: {frame[DATE].null_count()} date value(s) are not "
                        "dates (ISO YYYY-MM-DD)")
    if since is not None:
        frame = frame.filter(pl.col(DATE) >= since)
    return frame.with_columns(pl.col(CODE).cast(pl.Utf8)) if CODE in columns else frame


def _key_spec(config: Any) -> CacheSpec:
    """The panel's own names of its key columns (``[data] date_column``, ``code_column``)."""
    return CacheSpec(date_column=config.date_column, code_column=config.code_column)


def key_names(config: Any) -> dict[str, str]:
    """The panel's own names of the key columns -> ``date``/``code``."""
    return _key_spec(config).renames()


def checked_columns(trained: Any, source: str) -> tuple[list[str], dict[str, Any] | None]:
    """The panel's columns (key names ``date``/``code``) and, for parquet, their types, after
    the one-line refusal of a panel whose feature columns are not the model's (a CSV's types
    are checked once read)."""
    from cache import CacheError, source_columns

    spec = _key_spec(trained.config)
    keys = spec.renames()
    try:
        columns = source_columns(source, spec)
    except CacheError as exc:
        raise UserError(str(exc)) from None
    schema = dict(pl.read_parquet_schema(source)) if not _is_csv(source) else None
    if schema is not None:
        schema = {keys.get(k, k): v for k, v in schema.items()}
    check_columns(source, columns, schema, tuple(trained.feature_names))
    return columns, schema


def panel_calendar(source: str, config: Any) -> list[Any]:
    """The panel's dates, sorted, reading its date column only."""
    return _read(source, [DATE], key_names(config))[DATE].unique().sort().to_list()


def check_columns(source: str, columns: list[str], schema: dict[str, Any] | None,
                  features: tuple[str, ...]) -> None:
    """One-line refusal of a panel whose feature columns are not the model's."""
    from cache import forward_looking

    missing = [f for f in features if f not in columns]
    extra = [c for c in columns if c not in (DATE, CODE, *features)
             and not TARGET.fullmatch(c) and not forward_looking(c)]
    for key in (DATE, CODE):
        if key not in columns:
            raise UserError(f"panel {source} has no {key!r} column; columns: "
                            f"{', '.join(columns)}")
    problems = []
    if missing:
        hints = []
        for name in missing:
            close = difflib.get_close_matches(name, extra, n=1, cutoff=0.6)
            if close:
                hints.append(f"{close[0]!r} for {name!r}?")
        problems.append(f"missing {', '.join(missing)}"
                        + (f" (renamed? {' '.join(hints)})" if hints else ""))
    if extra:
        problems.append(f"extra {', '.join(extra)}")
    if schema is not None:
        wrong = [f"{f} ({schema[f]})" for f in features
                 if f in schema and schema[f] is not None and not schema[f].is_numeric()]
        if wrong:
            problems.append(f"not numeric: {', '.join(wrong)}")
    if problems:
        raise UserError(f"panel {source} does not have the model's features: "
                        f"{'; '.join(problems)}. The model was trained on "
                        f"{', '.join(features)}")


def resolve_dates(spec: str, calendar: list[Any]) -> list[int]:
    """Indices into ``calendar`` of ``last``, ``all`` or ``START:END`` (ISO, inclusive; either
    side may be empty)."""
    if not calendar:
        return []
    if spec == "last":
        return [len(calendar) - 1]
    if spec == "all":
        return list(range(len(calendar)))
    start, sep, end = spec.partition(":")
    if not sep:
        raise UserError(f"--dates must be last, all or START:END (ISO dates), got {spec!r}")
    try:
        lo = np.datetime64(start, "D") if start else None
        hi = np.datetime64(end, "D") if end else None
    except ValueError:
        raise UserError(f"--dates {spec!r}: START and END must be ISO dates (YYYY-MM-DD)") \
            from None
    days = np.array(calendar, dtype="datetime64[D]")
    keep = np.ones(len(days), dtype=bool)
    if lo is not None:
        keep &= days >= lo
    if hi is not None:
        keep &= days <= hi
    picked = np.flatnonzero(keep).tolist()
    if not picked:
        raise UserError(f"--dates {spec!r} selects none of the panel's dates ({days[0]} to "
                        f"{days[-1]})")
    return picked


def score_panel(trained: Any, source: str, *, dates: str, cache_dir: Path,
                with_target: bool = False) -> Scored:
    """Scores of ``trained`` on ``source``'s requested dates (module docstring);
    ``with_target``: the rows also carry ``target``, the scored horizon's return after the
    execution lag (NaN where not yet realised)."""
    from cache import load_or_build
    from trainers.atft_gat.data import cache_panel
    from trainers.atft_gat.graph import REFRESH_DATES
    from trainers.atft_gat.predict import forward_dates
    from trainers.atft_gat.train import load_graphs, no_graphs

    config = trained.config
    features = tuple(trained.feature_names)
    keys = key_names(config)
    columns, schema = checked_columns(trained, source)
    targets = [f"ret_{h}d" for h in config.horizons]
    wanted_columns = [DATE, CODE, *features, *[t for t in targets if t in columns]]
    frame = None
    if schema is None:  # CSV: read once, whole; the types are known once read
        frame = _read(source, wanted_columns, keys)
        check_columns(source, columns, dict(frame.schema), features)
        calendar = frame[DATE].unique().sort().to_list()
    else:  # parquet: the date column first, then only the rows the scored dates need
        calendar = panel_calendar(source, config)
    wanted = resolve_dates(dates, calendar)
    history = max(config.lookback - 1, config.graph_window if trained.with_graph else 0)
    skipped = [str(calendar[i]) for i in wanted if i < history]
    wanted = [i for i in wanted if i >= history]
    if not wanted:
        raise UserError(f"panel {source} has {len(calendar)} date(s); the model needs "
                        f"{history} dates of history before a scored date (lookback "
                        f"{config.lookback}, graph_window {config.graph_window}): no requested "
                        "date can be scored")
    # Start on a refresh boundary at least a graph window before the refresh block of the
    # first scored date: the graph's running sums are then recomputed from the same rows where
    # a build over the whole panel recomputes them, so each date gets the same graph, bit for
    # bit.
    block = (wanted[0] // REFRESH_DATES) * REFRESH_DATES
    first_read = min(wanted[0] - history, block - config.graph_window)
    start = max(0, (first_read // REFRESH_DATES) * REFRESH_DATES)
    frame = (frame.filter(pl.col(DATE) >= calendar[start]) if frame is not None
             else _read(source, wanted_columns, keys, since=calendar[start]))
    frame = frame.with_columns(*[pl.lit(None, dtype=pl.Float64).alias(t) for t in targets
                                 if t not in frame.columns])
    spec = CacheSpec(feature_columns=features, target_columns=tuple(targets),
                     nan_policy=config.nan_policy)
    fc = load_or_build(frame.select(DATE, CODE, *features, *targets), cache_dir, spec,
                       source_id=f"scores of {source} from {calendar[start]}")
    panel = cache_panel(fc, missing_indicator=config.missing_indicator)
    panel = panel.lagged(config.execution_lag)
    graphs = (load_graphs(fc, panel, config) if trained.with_graph
              else no_graphs(len(panel.dates)))
    panel = replace(panel, feature_mean=trained.feature_mean, feature_std=trained.feature_std)
    local = np.array([i - start for i in wanted], dtype=np.int64)
    cols = forward_dates(trained, panel, graphs, local)
    scores = pl.DataFrame({"date": cols["date"].astype("datetime64[D]"),
                           "code": cols["code"].astype(str),
                           "score": cols["pred"].astype(np.float64)})
    if with_target:
        scores = scores.with_columns(target=pl.Series(cols["target"].astype(np.float64)))
    return Scored(frame=scores, skipped=skipped, dates=[str(calendar[i]) for i in wanted],
                  panel=panel, wanted=local)
