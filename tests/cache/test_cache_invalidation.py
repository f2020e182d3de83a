"""Keys: what is reused, what rebuilds (and says why), and that reuse parses nothing."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.csv
import pyarrow.parquet
import pytest

import cache._source as source_mod
from cache import FORMAT_VERSION, load_or_build, open_cache
from cache.errors import CacheError
from cache.feature_cache import cache_dirs
from cache.testing import make_panel, panel_spec


@pytest.fixture
def panel_file(tmp_path: Path) -> Path:
    path = tmp_path / "panel.parquet"
    make_panel(seed=4).write_parquet(path)
    return path


def _forbid_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a parquet/CSV reader was called on the reuse path")

    for name in ("read_parquet", "scan_parquet", "read_parquet_schema", "read_csv",
                 "scan_csv"):
        monkeypatch.setattr(pl, name, refuse)
    monkeypatch.setattr(pyarrow.parquet, "read_table", refuse)
    monkeypatch.setattr(pyarrow.parquet, "ParquetFile", refuse)
    monkeypatch.setattr(pyarrow.csv, "read_csv", refuse)


def test_unchanged_source_is_reused_and_logged(panel_file: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "caches"
    caplog.set_level(logging.INFO, logger="cache")
    first = load_or_build(panel_file, root, panel_spec())
    assert f"building cache {first.key}: no cache of {panel_file.resolve()} yet" in caplog.text
    caplog.clear()
    second = load_or_build(panel_file, root, panel_spec())
    assert second.key == first.key
    assert f"reusing cache {first.key}" in caplog.text and "building" not in caplog.text
    assert second.manifest["created_at"] == first.manifest["created_at"]  # not rebuilt
    assert cache_dirs(root) == [root / first.key]


def test_reuse_reads_no_parquet_or_csv(panel_file: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "caches"
    csv = tmp_path / "panel.csv"
    make_panel(seed=4).write_csv(csv)
    built = [load_or_build(p, root, panel_spec()) for p in (panel_file, csv)]
    _forbid_parsing(monkeypatch)
    # Unchanged stat signature: not even the raw bytes are hashed again.
    monkeypatch.setattr(source_mod, "_hash_file", lambda path: pytest.fail("rehashed"))
    for path, fc in zip((panel_file, csv), built, strict=True):
        again = load_or_build(path, root, panel_spec())
        assert again.key == fc.key
        np.testing.assert_array_equal(again.features, fc.features)


def test_touched_but_identical_file_is_rehashed_and_reused(panel_file: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           ) -> None:
    root = tmp_path / "caches"
    fc = load_or_build(panel_file, root, panel_spec())
    stat = panel_file.stat()
    os.utime(panel_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    hashed: list[Path] = []
    real_hash = source_mod._hash_file
    monkeypatch.setattr(source_mod, "_hash_file", lambda p: hashed.append(p) or real_hash(p))
    _forbid_parsing(monkeypatch)  # rehashing reads bytes; it parses nothing
    assert load_or_build(panel_file, root, panel_spec()).key == fc.key
    assert hashed == [panel_file.resolve()]


def test_changed_source_rebuilds_and_says_why(panel_file: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "caches"
    old = load_or_build(panel_file, root, panel_spec())
    changed = make_panel(seed=4).with_columns(pl.col("f1") + 1.0)
    changed.write_parquet(panel_file)
    caplog.set_level(logging.INFO, logger="cache")
    new = load_or_build(panel_file, root, panel_spec())
    assert new.key != old.key
    assert f"building cache {new.key}: source content changed" in caplog.text
    np.testing.assert_allclose(new.features[..., 1], old.features[..., 1] + 1.0, rtol=1e-6)
    assert old.features is not None and open_cache(old.path).key == old.key  # old one intact


def test_changed_feature_config_rebuilds_and_says_what_changed(
        panel_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "caches"
    a = load_or_build(panel_file, root, panel_spec())
    caplog.set_level(logging.INFO, logger="cache")
    b = load_or_build(panel_file, root, panel_spec(nan_policy="mask"))
    assert b.key != a.key
    assert "feature config changed (nan_policy 'refuse' -> 'mask')" in caplog.text
    c = load_or_build(panel_file, root, panel_spec(feature_columns=("f1",)))
    assert "feature_columns None -> ['f1']" in caplog.text
    assert len({a.key, b.key, c.key}) == 3
    # fill_value is no part of the key unless the policy fills
    assert load_or_build(panel_file, root, panel_spec(fill_value=9.0)).key == a.key
    assert load_or_build(panel_file, root, panel_spec(nan_policy="fill", fill_value=9.0)
                         ).key not in {a.key, b.key, c.key}


def test_dataframe_content_is_the_key(tmp_path: Path) -> None:
    frame = make_panel(seed=5)
    a = load_or_build(frame, tmp_path, panel_spec())
    # Same content rebuilt from scratch -> same key; an unrelated extra column -> same key.
    assert load_or_build(make_panel(seed=5), tmp_path, panel_spec()).key == a.key
    assert load_or_build(frame.with_columns(pl.lit("x").alias("note")), tmp_path,
                         panel_spec()).key == a.key
    one_cell = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 7).then(pl.col("ret_20d") + 1e-3)
        .otherwise(pl.col("ret_20d")).alias("ret_20d"))
    assert load_or_build(one_cell, tmp_path, panel_spec()).key != a.key
    recoded = frame.with_columns(pl.col("code").str.replace("0001", "0009"))
    assert load_or_build(recoded, tmp_path, panel_spec()).key != a.key


def test_deleted_source_is_an_error_naming_the_old_caches(panel_file: Path, tmp_path: Path,
                                                          ) -> None:
    root = tmp_path / "caches"
    fc = load_or_build(panel_file, root, panel_spec())
    panel_file.unlink()
    with pytest.raises(CacheError) as err:
        load_or_build(panel_file, root, panel_spec())
    message = str(err.value)
    assert "does not exist, so its cache key cannot be checked" in message
    assert str(fc.path) in message and "\n" not in message
    assert open_cache(fc.path).key == fc.key  # still usable directly


def test_incompatible_format_version(panel_file: Path, tmp_path: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "caches"
    fc = load_or_build(panel_file, root, panel_spec())
    # Pretend an older release wrote this cache under its own key.
    manifest = json.loads((fc.path / "manifest.json").read_text())
    manifest["format_version"] = 0
    old_dir = root / "0123456789abcdef01234567"
    fc.path.rename(old_dir)
    manifest["key"] = old_dir.name
    (old_dir / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(CacheError, match=r"written by cache format version 0, this code reads "
                                         rf"version {FORMAT_VERSION}; delete it and rebuild"):
        open_cache(old_dir)
    caplog.set_level(logging.INFO, logger="cache")
    rebuilt = load_or_build(panel_file, root, panel_spec())
    assert rebuilt.key == fc.key
    assert f"cache format changed (version 0 -> {FORMAT_VERSION})" in caplog.text


def test_damaged_caches_are_refused_not_read(panel_file: Path, tmp_path: Path) -> None:
    root = tmp_path / "caches"
    path = load_or_build(panel_file, root, panel_spec()).path
    data = path / "data.arrow"
    intact = data.read_bytes()
    data.write_bytes(intact[:-100])
    with pytest.raises(CacheError, match=r"bytes, its manifest says \d+; the cache is damaged"):
        open_cache(path)
    data.write_bytes(b"\0" * len(intact))
    with pytest.raises(CacheError, match="is not a readable Arrow file"):
        open_cache(path)
    data.write_bytes(intact)
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["files"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="lacks files; delete"):
        open_cache(path)
    with pytest.raises(CacheError, match="no feature cache at"):
        open_cache(tmp_path / "nowhere")
