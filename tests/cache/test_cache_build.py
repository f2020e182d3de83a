"""Building and reading a cache: the dense (dates, stocks, features) block, presence,
zero-copy views, torch, default feature selection, per-date statistics."""

from __future__ import annotations

import datetime as dt
import logging
import mmap
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from cache import (
    FORMAT_VERSION,
    CacheSpec,
    FeatureCache,
    load_or_build,
    open_cache,
)
from cache._torch import staged_copy
from cache.testing import make_panel, panel_spec

TARGETS = ["ret_1d", "ret_5d", "ret_10d", "ret_20d"]


def _dense(frame: pl.DataFrame, columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The panel made dense by hand: (D, S, len(columns)) float32 with NaN where a value is
    missing or the row absent, and (D, S) present; dates and codes sorted."""
    dates = sorted(frame["date"].unique().to_list())
    codes = sorted(frame["code"].unique().to_list())
    values = np.full((len(dates), len(codes), len(columns)), np.nan, dtype=np.float32)
    present = np.zeros((len(dates), len(codes)), dtype=bool)
    for row in frame.iter_rows(named=True):
        d, s = dates.index(row["date"]), codes.index(row["code"])
        values[d, s] = [np.nan if row[c] is None else row[c] for c in columns]
        present[d, s] = True
    return values, present


def _unbalanced(seed: int) -> pl.DataFrame:
    """Stocks enter and leave: 0006 lists on the third date, 0001 is gone on the fifth."""
    frame = make_panel(n_stocks=6, n_dates=5, seed=seed)
    frame = frame.filter(~((pl.col("code") == "0006") & (pl.col("date") < dt.date(2024, 1, 3))))
    return frame.filter(~((pl.col("code") == "0001") & (pl.col("date") == dt.date(2024, 1, 5))))


def test_arrays_hold_the_panel_sorted_by_date_then_code(tmp_path: Path) -> None:
    frame = make_panel(n_stocks=5, n_dates=4, n_features=3, seed=1)  # rows shuffled
    fc = load_or_build(frame, tmp_path, panel_spec())
    features, present = _dense(frame, ["f0", "f1", "f2"])
    targets, _ = _dense(frame, TARGETS)

    assert fc.feature_names == ("f0", "f1", "f2")
    assert fc.target_names == tuple(TARGETS)
    assert fc.features.shape == (4, 5, 3) and fc.features.dtype == np.float32
    assert fc.targets.shape == (4, 5, 4) and fc.targets.dtype == np.float32
    assert fc.present.shape == (4, 5) and fc.present.dtype == np.bool_
    assert fc.features.strides[1:] == (3 * 4, 4) and fc.targets.strides[1:] == (4 * 4, 4)
    np.testing.assert_array_equal(fc.features, features)
    np.testing.assert_array_equal(fc.targets, targets)
    np.testing.assert_array_equal(fc.present, present)
    assert present.all()  # a complete panel: every stock every date
    assert fc.codes == ["0001", "0002", "0003", "0004", "0005"]
    assert fc.dates.dtype == np.dtype("datetime64[D]")
    assert [str(d) for d in fc.dates] == ["2024-01-01", "2024-01-02", "2024-01-03",
                                          "2024-01-04"]
    assert (fc.n_rows, fc.n_dates, fc.n_codes) == (20, 4, 5)
    assert fc.manifest["rows"] == 20 and fc.manifest["n_features"] == 3
    assert (fc.manifest["n_dates"], fc.manifest["n_codes"]) == (4, 5)
    assert fc.manifest["build_passes"] == 1
    assert fc.manifest["nan"] == {"bad_values": {}, "missing_feature_values": 0,
                                  "rows_with_missing_feature": 0}
    assert fc.manifest["rows_with_target"] == dict.fromkeys(TARGETS, 20)
    assert fc.manifest["source"]["content_hash"]
    assert fc.manifest["format_version"] == FORMAT_VERSION
    assert fc.stats["present"].tolist() == [5, 5, 5, 5]
    assert fc.stats["count"].tolist() == [[5, 5, 5]] * 4


def test_each_date_is_its_cross_section_and_present_marks_its_stocks(tmp_path: Path) -> None:
    frame = _unbalanced(seed=2)
    fc = load_or_build(frame, tmp_path, panel_spec())

    assert fc.features.shape == (5, 6, 3) and fc.n_rows == 27
    assert fc.present.sum(axis=1).tolist() == [5, 5, 6, 6, 5]
    assert fc.stats["present"].tolist() == [5, 5, 6, 6, 5]
    for d, day in enumerate(fc.dates):
        want = frame.filter(pl.col("date") == day.astype(dt.date)).sort("code")
        assert [fc.codes[s] for s in np.flatnonzero(fc.present[d])] == want["code"].to_list()
        np.testing.assert_array_equal(fc.features[d][fc.present[d]],
                                      want.select("f0", "f1", "f2").to_numpy())
        np.testing.assert_array_equal(fc.targets[d][fc.present[d]],
                                      want.select(TARGETS).to_numpy())
        # an absent stock is all NaN, features and targets
        assert np.isnan(fc.features[d][~fc.present[d]]).all()
        assert np.isnan(fc.targets[d][~fc.present[d]]).all()
    assert not fc.present[:2, fc.codes.index("0006")].any()
    assert not fc.present[4, fc.codes.index("0001")]
    assert fc.date_position("2024-01-03") == 2
    assert fc.date_position(np.datetime64("2024-01-05")) == 4
    with pytest.raises(KeyError, match="2023-12-31 is not in the cache"):
        fc.date_position("2023-12-31")


def _mapping_range(fc: FeatureCache) -> tuple[int, int]:
    whole = np.frombuffer(fc._mm, dtype=np.uint8)  # the entire mapped file
    return whole.ctypes.data, whole.ctypes.data + whole.size


def test_feature_block_is_a_view_onto_the_memory_map(tmp_path: Path) -> None:
    fc = load_or_build(_unbalanced(seed=3), tmp_path, panel_spec(nan_policy="mask"))
    assert isinstance(fc._mm, mmap.mmap)
    whole = np.frombuffer(fc._mm, dtype=np.uint8)
    start, stop = _mapping_range(fc)
    on_disk = np.fromfile(fc.path / "data.arrow", dtype=np.uint8)
    stride = fc.features.strides[0]
    assert stride >= fc.features[0].nbytes  # one batch per date, at one stride
    for array in (fc.features, fc.targets, fc.present):
        assert not array.flags.owndata and not array.flags.writeable
        assert np.shares_memory(array, whole)
        assert array.strides[0] == stride  # every column of a date lies in its batch
        first = array.ctypes.data
        assert first % 8 == 0  # Arrow's buffer alignment survives
        for d in range(fc.n_dates):
            block = array[d]
            assert block.flags.c_contiguous
            assert block.ctypes.data == first + d * stride
            assert start <= block.ctypes.data and block.ctypes.data + block.nbytes <= stop
            # The bytes at that address are the file's bytes: the map is of the cache file.
            offset = block.ctypes.data - start
            assert on_disk[offset:offset + block.nbytes].tobytes() == block.tobytes()


def test_numpy_views_are_read_only(tmp_path: Path) -> None:
    fc = load_or_build(make_panel(), tmp_path, panel_spec())
    with pytest.raises(ValueError, match="read-only"):
        fc.features[0, 0] = 1.0


def test_features_torch_on_cpu_shares_memory_and_writes_stay_private(tmp_path: Path) -> None:
    frame = make_panel()
    fc = load_or_build(frame, tmp_path, panel_spec())
    tensor = fc.features_torch()
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == fc.features.shape
    assert tensor.stride() == tuple(s // 4 for s in fc.features.strides)
    assert tensor.data_ptr() == fc.features.ctypes.data  # same memory, no copy
    assert torch.equal(tensor, torch.from_numpy(fc.features.copy()))
    assert torch.equal(fc.targets_torch(), torch.from_numpy(fc.targets.copy()))

    before = float(fc.features[1, 2, 0])
    tensor[1, 2, 0] = 123.0  # copy-on-write: this process only, never the file
    assert fc.features[1, 2, 0] == 123.0
    assert open_cache(fc.path).features[1, 2, 0] == before


def test_pin_or_cuda_without_cuda_is_a_user_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present: covered by the gpu test")
    from cache.errors import CacheError

    fc = load_or_build(make_panel(), tmp_path, panel_spec())
    with pytest.raises(CacheError, match="needs a CUDA device"):
        fc.features_torch(pin=True)
    with pytest.raises(CacheError, match="needs a CUDA device"):
        fc.features_torch(device="cuda")
    with pytest.raises(CacheError, match="not supported"):
        fc.features_torch(device="meta")


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 100])
def test_staged_copy_moves_every_row_whatever_the_chunking(chunk_rows: int) -> None:
    src = np.arange(7 * 4, dtype=np.float32).reshape(7, 4)
    dst = torch.full((7, 4), -1.0)
    staged_copy(src, dst, chunk_rows=chunk_rows, pinned=False, non_blocking=False)
    assert torch.equal(dst, torch.from_numpy(src))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_features_torch_on_cuda_equals_the_cpu_view(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import cache._torch as ct

    monkeypatch.setattr(ct, "STAGING_BYTES", 64)  # several chunks through both buffers
    fc = load_or_build(make_panel(n_stocks=9, n_dates=7), tmp_path, panel_spec())
    gpu = fc.features_torch(device="cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert gpu.is_cuda and torch.equal(gpu.cpu(), fc.features_torch())
    pinned = fc.features_torch(pin=True)
    assert pinned.is_pinned() and torch.equal(pinned, fc.features_torch())


def test_parquet_csv_and_dataframe_sources_give_the_same_arrays(tmp_path: Path) -> None:
    frame = _unbalanced(seed=3)
    frame.write_parquet(tmp_path / "panel.parquet")
    frame.write_csv(tmp_path / "panel.csv")
    root = tmp_path / "caches"
    caches = [load_or_build(s, root, panel_spec())
              for s in (frame, tmp_path / "panel.parquet", str(tmp_path / "panel.csv"))]
    for fc in caches[1:]:
        np.testing.assert_array_equal(fc.features, caches[0].features)
        np.testing.assert_array_equal(fc.targets, caches[0].targets)
        np.testing.assert_array_equal(fc.present, caches[0].present)
        np.testing.assert_array_equal(fc.dates, caches[0].dates)
        assert fc.codes == caches[0].codes == sorted(frame["code"].unique().to_list())
    assert {fc.manifest["source"]["kind"] for fc in caches} == {"dataframe", "parquet", "csv"}


def test_feature_selection_default_and_explicit(tmp_path: Path) -> None:
    frame = make_panel(n_features=3).with_columns(
        pl.lit("tech").alias("sector"),  # non-numeric: not a feature by default
        (pl.col("f0") * 2).cast(pl.Int64).alias("lots"),  # integers count as numeric
    )
    fc = load_or_build(frame, tmp_path, panel_spec())
    assert fc.feature_names == ("f0", "f1", "f2", "lots")

    picked = load_or_build(frame, tmp_path, CacheSpec(feature_columns=("f2", "f0"),
                                                      target_columns=("ret_5d",)))
    assert picked.feature_names == ("f2", "f0") and picked.target_names == ("ret_5d",)
    np.testing.assert_array_equal(picked.features, fc.features[..., [2, 0]])
    np.testing.assert_array_equal(picked.targets[..., 0], fc.targets[..., 1])
    assert picked.key != fc.key


def test_csv_keeps_leading_zeros_and_parses_iso_dates(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text(
        "date,code,x,ret_1d,ret_5d,ret_10d,ret_20d\n"
        "2024-01-03,0007,1.5,0.1,0.2,0.3,0.4\n"
        "2024-01-02,0007,2,0.1,0.2,0.3,0.4\n"
        "2024-01-02,0010,3,0.1,0.2,0.3,0.4\n"
    )
    fc = load_or_build(tmp_path / "p.csv", tmp_path / "c", panel_spec())
    assert fc.codes == ["0007", "0010"]
    assert [str(d) for d in fc.dates] == ["2024-01-02", "2024-01-03"]
    np.testing.assert_array_equal(fc.features[..., 0], [[2.0, 3.0], [1.5, np.nan]])
    assert fc.present.tolist() == [[True, True], [True, False]]


def test_tensor_outlives_the_cache_object(tmp_path: Path) -> None:
    import gc

    fc = load_or_build(make_panel(), tmp_path, panel_spec())
    expect = fc.features.copy()
    tensor = fc.features_torch()
    del fc
    gc.collect()  # the tensor keeps the mapping alive through its numpy base
    assert torch.equal(tensor, torch.from_numpy(expect))


def test_forced_rebuild_replaces_the_directory_and_old_readers_keep_reading(
        tmp_path: Path) -> None:
    from cache import build_cache

    frame = make_panel()
    path = build_cache(frame, tmp_path, panel_spec())
    old = open_cache(path)
    old.save_sidecar("g", {"w": np.ones(2)}, params={})
    again = build_cache(frame, tmp_path, panel_spec(), force=True)
    assert again == path
    new = open_cache(path)
    assert new.manifest["created_at"] > old.manifest["created_at"]
    assert new.load_sidecar("g", params={}) is None  # sidecars went with the old build
    np.testing.assert_array_equal(old.features, new.features)  # old map still readable
    assert sorted(p.name for p in tmp_path.iterdir()) == [".locks", path.name]


@pytest.mark.parametrize("policy", ["refuse", "mask", "fill"])
def test_a_missing_target_is_nan_and_leaves_the_features_whole(tmp_path: Path,
                                                               policy: str) -> None:
    """A row whose future return is unknown keeps its features (no look-ahead in presence),
    and no policy refuses or fills a target."""
    frame = make_panel(n_dates=4, n_stocks=3).with_columns(
        pl.when(pl.col("code") == pl.col("code").min()).then(None)
        .otherwise(pl.col("ret_20d")).alias("ret_20d"))
    fc = load_or_build(frame, tmp_path, panel_spec(nan_policy=policy), source_id="t")
    h = fc.target_names.index("ret_20d")
    assert fc.present.all()
    assert np.isfinite(fc.features).all()
    assert np.isnan(fc.targets[:, 0, h]).all()  # the first code's ret_20d, every date
    assert np.isfinite(fc.targets[:, 1:, h]).all()
    assert np.isfinite(np.delete(fc.targets, h, axis=2)).all()
    assert fc.manifest["nan"]["bad_values"] == {"ret_20d": 4}
    assert fc.manifest["nan"]["rows_with_missing_feature"] == 0
    assert fc.manifest["rows_with_target"] == {**dict.fromkeys(TARGETS, 12), "ret_20d": 8}
    assert fc.stats["target_count"][:, h].tolist() == [2, 2, 2, 2]


def test_forward_looking_columns_are_not_default_features(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    frame = make_panel(n_features=2, shuffle=False).with_columns(
        (pl.col("f0") + 1).alias("fwd_ret"),
        (pl.col("f0") > 0).cast(pl.Int8).alias("label"),
        (pl.col("f1") * 2).alias("ret_5d_lag"),  # a past return: not a forward name
    )  # ret_5d, ret_10d, ret_20d are in the frame too, but only ret_1d is a target
    only_1d = ("ret_1d",)
    caplog.set_level(logging.WARNING, logger="cache")
    fc = load_or_build(frame, tmp_path, CacheSpec(target_columns=only_1d))
    assert fc.feature_names == ("f0", "f1", "ret_5d_lag")
    assert fc.target_names == only_1d
    assert ("column(s) ret_5d, ret_10d, ret_20d, fwd_ret, label look like forward returns "
            "or labels and are not features") in caplog.text

    named = ("f0", "ret_5d", "fwd_ret", "label")
    picked = load_or_build(frame, tmp_path, CacheSpec(feature_columns=named,
                                                      target_columns=only_1d))
    assert picked.feature_names == named
    want, _ = _dense(frame, list(named))
    np.testing.assert_array_equal(picked.features, want)


def test_feature_moments_equal_numpy_over_present_finite_values(tmp_path: Path) -> None:
    frame = _unbalanced(seed=8).with_row_index().with_columns(
        pl.when(pl.col("index") % 4 == 1).then(None).otherwise(pl.col("f1")).alias("f1"),
        pl.when(pl.col("index") == 5).then(float("inf")).otherwise(pl.col("f2")).alias("f2"),
    ).drop("index")
    fc = load_or_build(frame, tmp_path, panel_spec(nan_policy="mask"))
    for picked in ([0, 2, 3], [4], list(range(5))):
        count, mean, std = fc.feature_moments(np.array(picked))
        values = fc.features[picked][fc.present[picked]].astype(np.float64)  # (rows, F)
        for f in range(3):
            column = values[:, f][np.isfinite(values[:, f])]
            assert count[f] == column.size
            assert mean[f] == pytest.approx(column.mean(), rel=1e-12, abs=1e-12)
            # Deviations are taken in float32 (float64 sums): ~1e-8 relative, far below what
            # standardisation can notice.
            assert std[f] == pytest.approx(column.std(), rel=1e-7, abs=1e-9)
    total, _, _ = fc.feature_moments(np.arange(5))
    assert total.tolist() == [27, 27 - fc.manifest["nan"]["bad_values"]["f1"], 26]
