"""Check a (date, code) panel against the data contract and turn it into cache arrays."""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass

import numpy as np
import polars as pl

from cache.errors import CacheError
from cache.spec import CODE_COLUMN, DATE_COLUMN, CacheSpec

log = logging.getLogger("cache")

# Rows handled per step of the NaN scan: bounds its temporary bool mask to
# CHUNK_ROWS x columns bytes (~6 MB for 100 columns) whatever the panel's size.
CHUNK_ROWS = 65_536
MAX_LISTED = 12  # column names shown in one error line before "... (N more)"


@dataclass
class Panel:
    """A checked panel, sorted by (date, code), as the arrays the cache stores."""

    features: np.ndarray  # (rows, n_features) float32, C-contiguous
    targets: np.ndarray  # (rows, n_targets) float32, C-contiguous
    valid: np.ndarray | None  # (rows,) bool under the "mask" policy, else None
    target_valid: np.ndarray | None  # (rows, n_targets) bool under "mask", else None
    feature_valid: np.ndarray | None  # (rows,) bool under "mask": every feature was finite
    date_index: np.ndarray  # (rows,) int32 into unique_dates
    code_index: np.ndarray  # (rows,) int32 into codes
    unique_dates: np.ndarray  # (n_dates,) datetime64[D], ascending
    codes: list[str]  # sorted
    date_offsets: np.ndarray  # (n_dates + 1,) int64
    feature_names: tuple[str, ...]
    target_names: tuple[str, ...]
    bad_values: dict[str, int]  # column -> NaN/inf/null count (before the policy acted)
    invalid_rows: int


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
        features = [c for c in present if c not in taken and _numeric(schema[c])]
        skipped = [c for c in present if c not in taken and not _numeric(schema[c])]
        if skipped:
            log.info("%s: skipping non-numeric column(s) %s (not features)", where,
                     _listing(skipped))
        if not features:
            raise CacheError(f"{where} has no numeric feature columns besides "
                             f"{', '.join([DATE_COLUMN, CODE_COLUMN, *targets])}; "
                             f"found {_listing(present)}")
    else:
        features = []  # decided once the data is read
    return features, targets


def _example_non_numeric(series: pl.Series) -> str:
    as_number = series.cast(pl.Float64, strict=False) if series.dtype == pl.String else None
    if as_number is None:
        return ""
    bad = series.is_not_null() & as_number.is_null()
    if not bad.any():
        return ""
    row = int(bad.arg_true()[0])
    return f", e.g. value {series[row]!r} in row {row}"


def _check_value_types(frame: pl.DataFrame, features: list[str], targets: list[str],
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


def _scan_non_finite(matrix: np.ndarray, row_bad: np.ndarray, *, replace_with: float | None,
                     ) -> np.ndarray:
    """Per-column count of NaN/inf; marks bad rows; replaces bad values unless None."""
    counts = np.zeros(matrix.shape[1], dtype=np.int64)
    for start in range(0, matrix.shape[0], CHUNK_ROWS):
        block = matrix[start:start + CHUNK_ROWS]  # view: replacements land in ``matrix``
        bad = ~np.isfinite(block)
        if not bad.any():
            continue
        counts += bad.sum(axis=0)
        row_bad[start:start + CHUNK_ROWS] |= bad.any(axis=1)
        if replace_with is not None:
            block[bad] = replace_with
    return counts


def prepare_panel(frame: pl.DataFrame, spec: CacheSpec, *, where: str) -> Panel:
    """Check ``frame`` and build the cache arrays; every problem is a one-line CacheError."""
    features, targets = resolve_columns(dict(frame.schema), spec, where=where, typed=True)
    if frame.height == 0:
        raise CacheError(f"{where} has no rows")
    _check_value_types(frame, features, targets, where)
    frame = frame.select(
        _dates(frame.get_column(DATE_COLUMN), where),
        _codes(frame.get_column(CODE_COLUMN), where),
        *features,
        *targets,
    ).sort([DATE_COLUMN, CODE_COLUMN])

    # Dense ranks of the sorted keys are exactly the indices into the sorted uniques.
    index = frame.select(
        (pl.col(DATE_COLUMN).rank("dense") - 1).cast(pl.Int32).alias("d"),
        (pl.col(CODE_COLUMN).rank("dense") - 1).cast(pl.Int32).alias("c"),
    )
    date_index = index.get_column("d").to_numpy().astype(np.int32, copy=False)
    code_index = index.get_column("c").to_numpy().astype(np.int32, copy=False)
    unique_dates = frame.get_column(DATE_COLUMN).unique().sort().to_numpy()
    unique_dates = unique_dates.astype("datetime64[D]")
    codes = frame.get_column(CODE_COLUMN).unique().sort().to_list()

    dup = (date_index[1:] == date_index[:-1]) & (code_index[1:] == code_index[:-1])
    n_dup = int(dup.sum())
    if n_dup:
        row = int(np.argmax(dup))
        raise CacheError(
            f"{where} has {n_dup} duplicate (date, code) row(s), e.g. "
            f"({unique_dates[date_index[row]]}, {codes[code_index[row]]}); keep one row per "
            "stock and date"
        )
    counts = np.bincount(date_index, minlength=len(unique_dates))
    date_offsets = np.zeros(len(unique_dates) + 1, dtype=np.int64)
    np.cumsum(counts, out=date_offsets[1:])

    replace = {"refuse": None, "mask": 0.0, "fill": float(spec.fill_value)}[spec.nan_policy]
    row_bad = np.zeros(frame.height, dtype=bool)
    x = _float32_matrix(frame, features)
    x_bad = _scan_non_finite(x, row_bad, replace_with=replace)
    # Kept apart from targets: a row whose *future* return is unknown still has usable
    # features (a trainer must not drop a stock from dates before its data ends).
    feature_valid = ~row_bad if spec.nan_policy == "mask" else None
    y = _float32_matrix(frame, targets)
    # Per-target validity, so a trainer of one horizon keeps rows that only a longer
    # horizon lacks (the last 20 dates have no ret_20d but do have ret_1d).
    target_valid = np.isfinite(y) if spec.nan_policy == "mask" else None
    y_bad = _scan_non_finite(y, row_bad, replace_with=replace)
    bad_values = {n: int(c) for n, c in zip([*features, *targets], [*x_bad, *y_bad],
                                            strict=True) if c}
    if bad_values and spec.nan_policy == "refuse":
        listed = [f"{n} ({c})" for n, c in bad_values.items()]
        raise CacheError(
            f"{where} has NaN/inf/null values in {len(listed)} column(s): {_listing(listed)}; "
            "nan_policy 'refuse' stops here: use 'mask' (keep rows, mark them invalid) or "
            "'fill' (replace with fill_value)"
        )
    return Panel(
        features=x,
        targets=y,
        valid=~row_bad if spec.nan_policy == "mask" else None,
        target_valid=target_valid,
        feature_valid=feature_valid,
        date_index=date_index,
        code_index=code_index,
        unique_dates=unique_dates,
        codes=codes,
        date_offsets=date_offsets,
        feature_names=tuple(features),
        target_names=tuple(targets),
        bad_values=bad_values,
        invalid_rows=int(row_bad.sum()),
    )
