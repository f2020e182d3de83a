"""Bad panels: one clear CacheError line each, and nothing left in the cache root."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cache import CacheSpec, load_or_build
from cache.errors import CacheError
from cache.testing import make_panel, panel_spec


def _leftovers(root: Path) -> list[str]:
    """Anything in the root that is, or could pass for, a cache (locks and memo are fine)."""
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.name not in (".locks", ".source-hashes.json"))


def _fails(source: object, root: Path, spec: CacheSpec, match: str) -> str:
    with pytest.raises(CacheError, match=match) as err:
        load_or_build(source, root, spec)  # type: ignore[arg-type]
    message = str(err.value)
    assert "\n" not in message
    assert _leftovers(root) == []
    return message


def _with_cell(frame: pl.DataFrame, column: str, row: int, value: float | None) -> pl.DataFrame:
    values = frame[column].to_list()
    values[row] = value
    return frame.with_columns(pl.Series(column, values, dtype=frame[column].dtype))


def test_missing_and_misnamed_columns_are_named_with_what_was_expected(tmp_path: Path) -> None:
    frame = make_panel().rename({"ret_5d": "ret5d"}).drop("ret_20d")
    message = _fails(frame, tmp_path, panel_spec(), "missing column")
    assert "missing column(s) ret_5d, ret_20d" in message
    assert "(did you mean 'ret5d' for 'ret_5d'?)" in message
    assert "expected date, code, ret_1d, ret_5d, ret_10d, ret_20d" in message
    assert "found date, code, f0, f1, f2, ret_1d, ret5d, ret_10d" in message

    parquet = tmp_path / "p.parquet"
    make_panel().write_parquet(parquet)
    message = _fails(parquet, tmp_path / "c", panel_spec(feature_columns=("f0", "f9")),
                     "missing column")
    assert "missing column(s) f9" in message and "and the features f0, f9" in message


def test_non_numeric_feature_column(tmp_path: Path) -> None:
    frame = make_panel().with_columns(pl.lit("tech").alias("sector"))
    message = _fails(frame, tmp_path / "a", panel_spec(feature_columns=("f0", "sector")),
                     "not numeric")
    assert "feature column 'sector' is not numeric (dtype String, e.g. value 'tech' in row 0)" \
        in message
    csv = tmp_path / "p.csv"
    make_panel().with_columns(pl.col("f1").cast(pl.String)).with_row_index().with_columns(
        pl.when(pl.col("index") == 3).then(pl.lit("n/a")).otherwise(pl.col("f1")).alias("f1")
    ).drop("index").write_csv(csv)
    message = _fails(csv, tmp_path / "c", panel_spec(feature_columns=("f0", "f1")),
                     "not numeric")
    assert "'f1' is not numeric (dtype String, e.g. value 'n/a' in row 3)" in message
    _fails(make_panel().with_columns(pl.col("ret_1d").cast(pl.String)), tmp_path / "b",
           panel_spec(), "target column 'ret_1d' is not numeric")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None])
def test_refuse_policy_names_each_feature_column_and_count(tmp_path: Path,
                                                           bad: float | None) -> None:
    frame = _with_cell(_with_cell(make_panel(), "f1", 2, bad), "f2", 9, bad)
    frame = _with_cell(_with_cell(frame, "f2", 3, bad), "ret_20d", 0, bad)
    message = _fails(frame, tmp_path, panel_spec(), "NaN/inf/null")
    # targets are never refused: ret_20d is no part of the complaint
    assert "NaN/inf/null values in 2 feature column(s): f1 (1), f2 (2);" in message
    assert "ret_20d" not in message
    assert "nan_policy 'refuse'" in message and "'mask'" in message and "'fill'" in message


def test_refuse_policy_keeps_a_missing_target_as_nan(tmp_path: Path) -> None:
    frame = make_panel(shuffle=False)  # rows already in (date, code) order
    frame = _with_cell(_with_cell(frame, "ret_20d", 0, None), "ret_20d", 5, float("inf"))
    fc = load_or_build(frame, tmp_path, panel_spec())
    assert np.isnan(fc.targets[0, 0, 3]) and np.isnan(fc.targets[1, 0, 3])
    assert np.isfinite(fc.targets).sum() == frame.height * 4 - 2
    assert fc.manifest["nan"]["bad_values"] == {"ret_20d": 2}
    assert fc.manifest["rows_with_target"]["ret_20d"] == frame.height - 2


def test_mask_policy_keeps_the_row_and_the_nan_in_place(tmp_path: Path) -> None:
    frame = make_panel(shuffle=False)  # row r is date r // 5, code r % 5
    frame = _with_cell(_with_cell(frame, "f0", 3, float("nan")), "ret_10d", 7, float("-inf"))
    frame = _with_cell(frame, "f2", 3, float("inf"))
    fc = load_or_build(frame, tmp_path, panel_spec(nan_policy="mask"))
    assert fc.present.all()  # a NaN feature never drops the row
    assert np.isnan(fc.features[0, 3, 0]) and np.isnan(fc.features[0, 3, 2])  # inf -> NaN
    assert fc.features[0, 3, 1] == frame["f1"][3]  # the row's other values stay
    assert np.isnan(fc.features).sum() == 2
    assert np.isnan(fc.targets[1, 2, 2])  # a -inf target is stored as NaN
    assert np.isfinite(fc.targets[0, 3]).all()  # the NaN feature is no missing target
    assert np.isnan(fc.targets).sum() == 1
    assert fc.features[1, 2, 0] == pytest.approx(frame["f0"][7])  # other cells untouched
    assert fc.manifest["nan"] == {"bad_values": {"f0": 1, "f2": 1, "ret_10d": 1},
                                  "missing_feature_values": 2, "rows_with_missing_feature": 1}
    assert fc.stats["count"][0].tolist() == [4, 5, 4]  # statistics skip the missing values


def test_fill_policy_replaces_features_and_never_targets(tmp_path: Path) -> None:
    frame = _with_cell(make_panel(shuffle=False), "f2", 4, None)
    frame = _with_cell(_with_cell(frame, "f0", 6, float("-inf")), "ret_1d", 6, float("nan"))
    fc = load_or_build(frame, tmp_path, panel_spec(nan_policy="fill", fill_value=-1.5))
    assert fc.features[0, 4, 2] == -1.5 and fc.features[1, 1, 0] == -1.5
    assert np.isfinite(fc.features).all()
    assert np.isnan(fc.targets[1, 1, 0])  # targets are never filled
    assert np.isnan(fc.targets).sum() == 1
    assert fc.manifest["nan"] == {"bad_values": {"f0": 1, "f2": 1, "ret_1d": 1},
                                  "missing_feature_values": 0, "rows_with_missing_feature": 0}


def test_float64_overflow_to_float32_counts_as_inf(tmp_path: Path) -> None:
    frame = make_panel().with_columns(pl.col("f0").cast(pl.Float64))
    frame = _with_cell(frame, "f0", 0, 1e300)
    _fails(frame, tmp_path, panel_spec(), r"f0 \(1\)")


def test_duplicate_rows(tmp_path: Path) -> None:
    frame = make_panel()
    doubled = pl.concat([frame, frame.head(2)])
    message = _fails(doubled, tmp_path, panel_spec(), "duplicate")
    assert "has 2 duplicate (date, code) row(s), e.g. (" in message


@pytest.mark.parametrize("name,content,match", [
    ("empty.parquet", b"", r"is empty \(0 bytes\)"),
    ("empty.csv", b"", r"is empty \(0 bytes\)"),
    ("header.csv", b"date,code,f0,ret_1d,ret_5d,ret_10d,ret_20d\n", "header but no rows"),
    ("junk.parquet", b"this is not parquet", "cannot read parquet"),
    ("panel.txt", b"x", "neither parquet"),
])
def test_empty_or_unreadable_files(tmp_path: Path, name: str, content: bytes, match: str,
                                   ) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    _fails(path, tmp_path / "caches", panel_spec(), match)


def test_empty_frame_and_bad_keys(tmp_path: Path) -> None:
    frame = make_panel()
    _fails(frame.head(0), tmp_path, panel_spec(), "has no rows")
    bad_dates = frame.with_columns(pl.col("date").cast(pl.String).str.replace_all("-", "/"))
    _fails(bad_dates, tmp_path, panel_spec(), r"not ISO dates \(YYYY-MM-DD\), e.g. '2024/")
    _fails(_with_cell(frame.with_columns(pl.col("code")), "code", 1, None), tmp_path,
           panel_spec(), "column 'code' has 1 missing value")
    _fails(frame.with_columns(pl.lit(1.5).alias("date")), tmp_path, panel_spec(),
           "column 'date' has dtype Float64; expected a date")


def test_datetime_dates_and_integer_codes_are_accepted(tmp_path: Path) -> None:
    frame = make_panel(n_stocks=3, n_dates=2).with_columns(
        pl.col("date").cast(pl.Datetime("us")), pl.col("code").cast(pl.Int64))
    fc = load_or_build(frame, tmp_path, panel_spec())
    assert fc.codes == ["1", "2", "3"]
    assert fc.dates.tolist() == [dt.date(2024, 1, 1), dt.date(2024, 1, 2)]
    assert fc.present.all() and fc.features.shape == (2, 3, 3)


@pytest.mark.parametrize("make_spec,match", [
    (lambda: panel_spec(nan_policy="drop"), "nan_policy='drop' is not one of refuse, mask, fill"),
    (lambda: panel_spec(feature_columns=("a", "a", "ret_1d")),
     "feature_columns lists a more than once; ret_1d is both a feature and a target"),
    (lambda: CacheSpec(target_columns=()), "target_columns is empty"),
    (lambda: panel_spec(feature_columns=("date",), fill_value=float("nan")),
     "fill_value=nan must be a finite number; feature_columns may not include the key"),
])
def test_bad_spec_reports_every_problem(make_spec: Callable[[], CacheSpec], match: str) -> None:
    with pytest.raises(CacheError, match=match):
        make_spec()


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_check_source_finds_what_a_build_would_and_writes_nothing(tmp_path: Path,
                                                                  suffix: str) -> None:
    from cache import check_source, source_columns

    panel = make_panel(n_stocks=5, n_dates=4)
    path = tmp_path / f"panel{suffix}"
    (panel.write_parquet if suffix == ".parquet" else panel.write_csv)(path)
    assert set(source_columns(path)) == set(panel.columns)
    got = check_source(path, panel_spec())
    assert (got["dates"], got["codes"]) == (4, 5)
    assert got["features"] == ["f0", "f1", "f2"]
    bad = pl.concat([panel, panel.head(1)])
    (bad.write_parquet if suffix == ".parquet" else bad.write_csv)(path)
    with pytest.raises(CacheError, match=r"1 duplicate \(date, code\) row"):
        check_source(path, panel_spec())
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"panel{suffix}"]
    with pytest.raises(CacheError, match="does not exist"):
        source_columns(tmp_path / "nowhere.parquet")
