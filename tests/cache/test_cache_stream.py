"""The streaming build: chunked sources and unsorted ones give the same cache as one read."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

import cache._dense as dense
import cache.core as core
from cache import FeatureCache, load_or_build
from cache.testing import make_panel, panel_spec

N_DATES, N_STOCKS, N_FEATURES, N_TARGETS = 7, 6, 3, 4


def _panel() -> pl.DataFrame:
    """Unbalanced, with missing features and targets, rows shuffled (not in date order)."""
    frame = make_panel(n_stocks=N_STOCKS, n_dates=N_DATES, n_features=N_FEATURES, seed=11)
    frame = frame.filter(~((pl.col("code") == "0002") & (pl.col("date") > dt.date(2024, 1, 5))))
    frame = frame.filter(~((pl.col("code") == "0006") & (pl.col("date") < dt.date(2024, 1, 3))))
    return frame.with_row_index().with_columns(
        pl.when(pl.col("index") % 5 == 2).then(None).otherwise(pl.col("f1")).alias("f1"),
        pl.when(pl.col("index") % 9 == 4).then(None).otherwise(pl.col("ret_5d")).alias("ret_5d"),
    ).drop("index")


def _same_cache(a: FeatureCache, b: FeatureCache) -> None:
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.targets, b.targets)
    np.testing.assert_array_equal(a.present, b.present)
    np.testing.assert_array_equal(a.dates, b.dates)
    assert a.codes == b.codes and a.feature_names == b.feature_names
    assert sorted(a.stats) == sorted(b.stats)
    for name in a.stats:
        np.testing.assert_array_equal(a.stats[name], b.stats[name], err_msg=name)
    for key in ("rows", "n_dates", "n_codes", "nan", "rows_with_target", "schema"):
        assert a.manifest[key] == b.manifest[key], key


def _record_chunks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...] | int]:
    """Spy on the build's chunk reader: the columns of each pass, then each chunk's rows."""
    seen: list[tuple[str, ...] | int] = []
    real = core.iter_chunks

    def spy(source: Any, frame: Any, columns: list[str], convert: Any = None) -> Iterator[Any]:
        seen.append(tuple(columns))
        for chunk in real(source, frame, columns, convert):
            seen.append(chunk.height if isinstance(chunk, pl.DataFrame) else len(chunk[0]))
            yield chunk

    monkeypatch.setattr(core, "iter_chunks", spy)
    return seen


def test_a_source_not_sorted_by_date_builds_the_same_cache_in_several_passes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    shuffled = _panel()
    in_order = shuffled.sort(["date", "code"])
    spec = panel_spec(nan_policy="mask")
    reference = load_or_build(in_order, tmp_path / "sorted", spec)
    assert reference.manifest["build_passes"] == 1

    # Room for two dates' dense blocks at a time: 7 dates take 4 reads of the source.
    row_bytes = N_STOCKS * (N_FEATURES + N_TARGETS) * 4
    monkeypatch.setattr(dense, "BLOCK_BYTES", 2 * row_bytes)
    monkeypatch.setattr(dense, "CHUNK_ROWS", 5)
    seen = _record_chunks(monkeypatch)
    caplog.set_level(logging.WARNING, logger="cache")
    unsorted = load_or_build(shuffled, tmp_path / "unsorted", spec)

    assert unsorted.manifest["build_passes"] == 4
    assert "is not sorted by date: reading it 4 times" in caplog.text
    value_columns = tuple(unsorted.feature_names + unsorted.target_names)
    assert seen.count(value_columns) == 4 and seen.count(("date", "code")) == 1
    assert max(n for n in seen if isinstance(n, int)) == 5
    _same_cache(unsorted, reference)


def test_a_date_ordered_source_is_read_once_whatever_the_block_size(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    in_order = _panel().sort(["date", "code"])
    reference = load_or_build(in_order, tmp_path / "a", panel_spec(nan_policy="mask"))
    monkeypatch.setattr(dense, "BLOCK_BYTES", 1)  # would force one pass per date if unsorted
    monkeypatch.setattr(dense, "CHUNK_ROWS", 4)  # chunks cut dates in the middle
    seen = _record_chunks(monkeypatch)
    streamed = load_or_build(in_order, tmp_path / "b", panel_spec(nan_policy="mask"))
    assert streamed.manifest["build_passes"] == 1
    assert sum(1 for n in seen if not isinstance(n, int)) == 2  # keys once, values once
    _same_cache(streamed, reference)


def test_a_parquet_of_small_row_groups_streams_in_chunks(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         ) -> None:
    frame = _panel().sort(["date", "code"])
    path = tmp_path / "panel.parquet"
    pq.write_table(frame.to_arrow(), path, row_group_size=7)
    assert pq.ParquetFile(path).metadata.num_row_groups == 6  # 38 rows
    reference = load_or_build(frame, tmp_path / "whole", panel_spec(nan_policy="mask"))

    monkeypatch.setattr(dense, "CHUNK_ROWS", 3)
    seen = _record_chunks(monkeypatch)
    streamed = load_or_build(path, tmp_path / "streamed", panel_spec(nan_policy="mask"))
    # Both passes read row group by row group (7 rows each, the last 3), 3 rows at most.
    per_pass = [3, 3, 1] * 5 + [3]
    assert [n for n in seen if isinstance(n, int)] == per_pass * 2
    assert streamed.manifest["source"]["kind"] == "parquet"
    _same_cache(streamed, reference)
