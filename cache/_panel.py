"""The data contract of a (date, code) panel: which columns, their types, dates and codes."""

from __future__ import annotations

import difflib
import logging
import re

import numpy as np
import polars as pl

from cache.errors import CacheError
from cache.spec import CODE_COLUMN, DATE_COLUMN, CacheSpec

log = logging.getLogger("cache")

# Default feature lists never take a column that looks like a label: a forward return
# ``ret_<h>d`` or a name with one of these words. Fed as features, they leak the future
# (``ret_5d`` alone scores RankIC 0.44 against ``ret_1d``); list one in ``feature_columns``
# on purpose to use it anyway.
FORWARD_RETURN = re.compile(r"ret_\d+d")
FORWARD_WORDS = ("fwd", "forward", "future", "label", "target")
MAX_LISTED = 12  # column names shown in one error line before "... (N more)"


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f", ... ({len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else "")


def _numeric(dtype: pl.DataType | None) -> bool:
    return dtype is not None and dtype.is_numeric()


def resolve_columns(schema: dict[str, pl.DataType | None], spec: CacheSpec, *, where: str,
                    typed: bool) -> tuple[list[str], list[str]]:
    """(feature columns, target columns) of a panel with this schema, or a CacheError.

    ``typed`` False means the types are not known yet (a CSV header): names are checked,
    and the default feature selection must wait for the data.
    """
    present = list(schema)
    targets = list(spec.target_columns)
    wanted = [DATE_COLUMN, CODE_COLUMN, *targets, *(spec.feature_columns or ())]
    missing = [c for c in wanted if c not in schema]
    if missing:
        hints = []
        unclaimed = [c for c in present if c not in wanted]
        for name in missing:
            close = difflib.get_close_matches(name, unclaimed, n=1, cutoff=0.6)
            if close:
                unclaimed.remove(close[0])  # one present column explains one missing name
                hints.append(f"{close[0]!r} for {name!r}")
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        if DATE_COLUMN in missing or CODE_COLUMN in missing:
            hint += (" (a panel whose keys have other names: set date_column / code_column, "
                     "[data] in a study file)")
        expected = [DATE_COLUMN, CODE_COLUMN, *targets]
        feature_note = (f" and the features {_listing(list(spec.feature_columns))}"
                        if spec.feature_columns else "")
        raise CacheError(
            f"{where} is missing column(s) {_listing(missing)}{hint}; expected "
            f"{', '.join(expected)}{feature_note}; found {_listing(present) or 'no columns'}"
        )
    if spec.feature_columns is not None:
        features = list(spec.feature_columns)
    elif typed:
        taken = {DATE_COLUMN, CODE_COLUMN, *targets}
        looking_ahead = [c for c in present if c not in taken and forward_looking(c)]
        taken.update(looking_ahead)
        features = [c for c in present if c not in taken and _numeric(schema[c])]
        skipped = [c for c in present if c not in taken and not _numeric(schema[c])]
        if skipped:
            log.info("%s: skipping non-numeric column(s) %s (not features)", where,
                     _listing(skipped))
        if looking_ahead:
            log.warning("%s: column(s) %s look like forward returns or labels and are not "
                        "features; name them in the feature list to use them anyway", where,
                        _listing(looking_ahead))
        if not features:
            raise CacheError(f"{where} has no numeric feature columns besides "
                             f"{', '.join([DATE_COLUMN, CODE_COLUMN, *targets])}; "
                             f"found {_listing(present)}")
    else:
        features = []  # decided once the data is read
    return features, targets


def forward_looking(name: str) -> bool:
    """True for ``ret_<h>d`` and names with a word that marks a label (see FORWARD_WORDS)."""
    if FORWARD_RETURN.fullmatch(name.lower()):
        return True
    words = re.split(r"[^a-z0-9]+", name.lower())
    return any(w.startswith(marker) for w in words for marker in FORWARD_WORDS)


def _example_non_numeric(series: pl.Series) -> str:
    as_number = series.cast(pl.Float64, strict=False) if series.dtype == pl.String else None
    if as_number is None:
        return ""
    bad = series.is_not_null() & as_number.is_null()
    if not bad.any():
        return ""
    row = int(bad.arg_true()[0])
    return f", e.g. value {series[row]!r} in row {row}"


def check_value_types(frame: pl.DataFrame, features: list[str], targets: list[str],
                       where: str) -> None:
    problems = []
    for kind, names in (("feature", features), ("target", targets)):
        for name in names:
            series = frame.get_column(name)
            if not _numeric(series.dtype):
                problems.append(f"{kind} column {name!r} is not numeric (dtype "
                                f"{series.dtype}{_example_non_numeric(series)})")
    if problems:
        raise CacheError(f"{where}: " + "; ".join(problems))


def _dates(series: pl.Series, where: str) -> pl.Series:
    if series.dtype == pl.Date:
        dates = series
    elif isinstance(series.dtype, pl.Datetime):
        dates = series.dt.date()
    elif series.dtype == pl.String:
        dates = series.str.strip_chars().str.to_date("%Y-%m-%d", strict=False)
        bad = series.is_not_null() & dates.is_null()
        if bad.any():
            row = int(bad.arg_true()[0])
            raise CacheError(f"{where}: column {DATE_COLUMN!r} has {int(bad.sum())} value(s) "
                             f"that are not ISO dates (YYYY-MM-DD), e.g. {series[row]!r} in "
                             f"row {row}")
    else:
        raise CacheError(f"{where}: column {DATE_COLUMN!r} has dtype {series.dtype}; expected "
                         "a date (parquet Date, or ISO YYYY-MM-DD strings in CSV)")
    nulls = dates.null_count()
    if nulls:
        raise CacheError(f"{where}: column {DATE_COLUMN!r} has {nulls} missing value(s)")
    return dates.alias(DATE_COLUMN)


def _codes(series: pl.Series, where: str) -> pl.Series:
    if isinstance(series.dtype, pl.Categorical | pl.Enum) or series.dtype.is_integer():
        series = series.cast(pl.String)
    if series.dtype != pl.String:
        raise CacheError(f"{where}: column {CODE_COLUMN!r} has dtype {series.dtype}; expected "
                         "string stock codes")
    nulls = series.null_count()
    if nulls:
        raise CacheError(f"{where}: column {CODE_COLUMN!r} has {nulls} missing value(s)")
    return series.alias(CODE_COLUMN)


def _float32_matrix(frame: pl.DataFrame, names: list[str]) -> np.ndarray:
    """(rows, len(names)) float32 C-contiguous and writable; nulls become NaN."""
    out = frame.select([pl.col(n).cast(pl.Float32) for n in names]).to_numpy(order="c")
    if out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable:
        out = np.array(out, dtype=np.float32, order="C", copy=True)
    return out
