"""Building and reading a cache: values, order, offsets, zero-copy views, torch."""

from __future__ import annotations

import datetime as dt
import mmap
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from cache import FORMAT_VERSION, CacheSpec, FeatureCache, load_or_build, open_cache
from cache._torch import staged_copy
from cache.testing import make_panel

TARGETS = ["ret_1d", "ret_5d", "ret_10d", "ret_20d"]


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(["date", "code"])


def test_arrays_hold_the_panel_sorted_by_date_then_code(tmp_path: Path) -> None:
    frame = make_panel(n_stocks=5, n_dates=4, n_features=3, seed=1)
    fc = load_or_build(frame, tmp_path, CacheSpec())
    expect = _sorted(frame)

    assert fc.feature_names == ("f0", "f1", "f2")
    assert fc.target_names == tuple(TARGETS)
    assert fc.features.shape == (20, 3) and fc.features.dtype == np.float32
    assert fc.features.flags.c_contiguous and fc.targets.flags.c_contiguous
    np.testing.assert_array_equal(fc.features, expect.select("f0", "f1", "f2").to_numpy())
    np.testing.assert_array_equal(fc.targets, expect.select(TARGETS).to_numpy())
    assert fc.codes == ["0001", "0002", "0003", "0004", "0005"]
    assert fc.unique_dates.dtype == np.dtype("datetime64[D]")
    assert [str(d) for d in fc.unique_dates] == ["2024-01-01", "2024-01-02", "2024-01-03",
                                                 "2024-01-04"]
    # indices reproduce the key columns row by row
    dates = [str(fc.unique_dates[i]) for i in fc.date_index]
    codes = [fc.codes[i] for i in fc.code_index]
    assert dates == [str(d) for d in expect["date"].to_list()]
    assert codes == expect["code"].to_list()
    assert fc.date_index.dtype == np.int32 and fc.code_index.dtype == np.int32
    assert fc.valid is None and fc.target_valid is None
    assert fc.manifest["rows"] == 20 and fc.manifest["n_features"] == 3
    assert fc.manifest["source"]["content_hash"]
    assert fc.manifest["format_version"] == FORMAT_VERSION


def test_date_offsets_slice_each_cross_section(tmp_path: Path) -> None:
    # Unbalanced panel: stocks enter and leave, so dates hold different row counts.
    frame = make_panel(n_stocks=6, n_dates=5, seed=2)
    frame = frame.filter(~((pl.col("code") == "0006") & (pl.col("date") < dt.date(2024, 1, 3))))
    frame = frame.filter(~((pl.col("code") == "0001") & (pl.col("date") == dt.date(2024, 1, 5))))
    fc = load_or_build(frame, tmp_path, CacheSpec())

    assert fc.date_offsets.dtype == np.int64
    assert fc.date_offsets.tolist() == [0, 5, 10, 16, 22, 27]
    for i, day in enumerate(fc.unique_dates):
        rows = fc.cross_section(i)
        assert (fc.date_index[rows] == i).all()
        want = _sorted(frame).filter(pl.col("date") == day.astype(dt.date))
        np.testing.assert_array_equal(fc.features[rows], want.select("f0", "f1", "f2").to_numpy())
    assert fc.cross_section(-1) == slice(22, 27)
    assert fc.date_position("2024-01-03") == 2
    with pytest.raises(IndexError):
        fc.cross_section(5)
    with pytest.raises(KeyError):
        fc.date_position("2023-12-31")


def _mapping_range(fc: FeatureCache) -> tuple[int, int]:
    whole = np.frombuffer(fc._mm, dtype=np.uint8)  # the entire mapped file
    return whole.ctypes.data, whole.ctypes.data + whole.size


def test_feature_block_is_a_view_onto_the_memory_map(tmp_path: Path) -> None:
    fc = load_or_build(make_panel(n_features=7), tmp_path, CacheSpec(nan_policy="mask"))
    assert isinstance(fc._mm, mmap.mmap)
    whole = np.frombuffer(fc._mm, dtype=np.uint8)
    start, stop = _mapping_range(fc)
    for array in (fc.features, fc.targets, fc.date_index, fc.code_index, fc.valid,
                  fc.target_valid):
        assert not array.flags.owndata
        assert np.shares_memory(array, whole)
        assert start <= array.ctypes.data and array.ctypes.data + array.nbytes <= stop
    # The bytes at that address are the file's bytes: the map is of the cache file.
    offset = fc.features.ctypes.data - start
    on_disk = np.fromfile(fc.path / "data.arrow", dtype=np.uint8)
    assert on_disk[offset:offset + fc.features.nbytes].tobytes() == fc.features.tobytes()
    assert fc.features.ctypes.data % 8 == 0  # Arrow's buffer alignment survives


def test_numpy_views_are_read_only(tmp_path: Path) -> None:
    fc = load_or_build(make_panel(), tmp_path, CacheSpec())
    with pytest.raises(ValueError, match="read-only"):
        fc.features[0, 0] = 1.0


def test_features_torch_on_cpu_shares_memory_and_writes_stay_private(tmp_path: Path) -> None:
    frame = make_panel()
    fc = load_or_build(frame, tmp_path, CacheSpec())
    tensor = fc.features_torch()
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == fc.features.shape
    assert tensor.is_contiguous()
    assert tensor.data_ptr() == fc.features.ctypes.data  # same memory, no copy
    assert torch.equal(fc.targets_torch(), torch.from_numpy(fc.targets.copy()))

    before = float(fc.features[0, 0])
    tensor[0, 0] = 123.0  # copy-on-write: this process only, never the file
    assert fc.features[0, 0] == 123.0
    assert open_cache(fc.path).features[0, 0] == before


def test_pin_or_cuda_without_cuda_is_a_user_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present: covered by the gpu test")
    from cache.errors import CacheError

    fc = load_or_build(make_panel(), tmp_path, CacheSpec())
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
    fc = load_or_build(make_panel(n_stocks=9, n_dates=7), tmp_path, CacheSpec())
    gpu = fc.features_torch(device="cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert gpu.is_cuda and torch.equal(gpu.cpu(), fc.features_torch())
    pinned = fc.features_torch(pin=True)
    assert pinned.is_pinned() and torch.equal(pinned, fc.features_torch())


def test_parquet_csv_and_dataframe_sources_give_the_same_arrays(tmp_path: Path) -> None:
    frame = make_panel(seed=3)
    frame.write_parquet(tmp_path / "panel.parquet")
    frame.write_csv(tmp_path / "panel.csv")
    root = tmp_path / "caches"
    caches = [load_or_build(s, root, CacheSpec())
              for s in (frame, tmp_path / "panel.parquet", str(tmp_path / "panel.csv"))]
    for fc in caches[1:]:
        np.testing.assert_array_equal(fc.features, caches[0].features)
        np.testing.assert_array_equal(fc.targets, caches[0].targets)
        np.testing.assert_array_equal(fc.unique_dates, caches[0].unique_dates)
        assert fc.codes == caches[0].codes == sorted(frame["code"].unique().to_list())
    assert {fc.manifest["source"]["kind"] for fc in caches} == {"dataframe", "parquet", "csv"}


def test_feature_selection_default_and_explicit(tmp_path: Path) -> None:
    frame = make_panel(n_features=3).with_columns(
        pl.lit("tech").alias("sector"),  # non-numeric: not a feature by default
        (pl.col("f0") * 2).cast(pl.Int64).alias("lots"),  # integers count as numeric
    )
    fc = load_or_build(frame, tmp_path, CacheSpec())
    assert fc.feature_names == ("f0", "f1", "f2", "lots")

    picked = load_or_build(frame, tmp_path, CacheSpec(feature_columns=("f2", "f0"),
                                                      target_columns=("ret_5d",)))
    assert picked.feature_names == ("f2", "f0") and picked.target_names == ("ret_5d",)
    np.testing.assert_array_equal(picked.features, fc.features[:, [2, 0]])
    np.testing.assert_array_equal(picked.targets[:, 0], fc.targets[:, 1])
    assert picked.key != fc.key


def test_csv_keeps_leading_zeros_and_parses_iso_dates(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text(
        "date,code,x,ret_1d,ret_5d,ret_10d,ret_20d\n"
        "2024-01-03,0007,1.5,0.1,0.2,0.3,0.4\n"
        "2024-01-02,0007,2,0.1,0.2,0.3,0.4\n"
        "2024-01-02,0010,3,0.1,0.2,0.3,0.4\n"
    )
    fc = load_or_build(tmp_path / "p.csv", tmp_path / "c", CacheSpec())
    assert fc.codes == ["0007", "0010"]
    assert fc.features[:, 0].tolist() == [2.0, 3.0, 1.5]
    assert fc.date_offsets.tolist() == [0, 2, 3]


def test_tensor_outlives_the_cache_object(tmp_path: Path) -> None:
    import gc

    fc = load_or_build(make_panel(), tmp_path, CacheSpec())
    expect = fc.features.copy()
    tensor = fc.features_torch()
    del fc
    gc.collect()  # the tensor keeps the mapping alive through its numpy base
    assert torch.equal(tensor, torch.from_numpy(expect))


def test_forced_rebuild_replaces_the_directory_and_old_readers_keep_reading(
        tmp_path: Path) -> None:
    from cache import build_cache

    frame = make_panel()
    path = build_cache(frame, tmp_path, CacheSpec())
    old = open_cache(path)
    old.save_sidecar("g", {"w": np.ones(2)}, params={})
    again = build_cache(frame, tmp_path, CacheSpec(), force=True)
    assert again == path
    new = open_cache(path)
    assert new.manifest["created_at"] > old.manifest["created_at"]
    assert new.load_sidecar("g", params={}) is None  # sidecars went with the old build
    np.testing.assert_array_equal(old.features, new.features)  # old map still readable
    assert sorted(p.name for p in tmp_path.iterdir()) == [".locks", path.name]


def test_feature_validity_is_kept_apart_from_targets(tmp_path: Path) -> None:
    """A row whose future return is unknown keeps valid features (no look-ahead in presence)."""
    frame = make_panel(n_dates=4, n_stocks=3).with_columns(
        pl.when(pl.col("code") == pl.col("code").min()).then(None)
        .otherwise(pl.col("ret_20d")).alias("ret_20d"))
    fc = load_or_build(frame, tmp_path, CacheSpec(nan_policy="mask"), source_id="t")
    first_code = fc.code_index == 0
    assert not fc.valid[first_code].any()          # the row as a whole has a bad value...
    assert fc.feature_valid[first_code].all()      # ...but its features are fine
    assert not fc.target_valid[first_code, fc.target_names.index("ret_20d")].any()
