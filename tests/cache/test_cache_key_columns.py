"""A panel whose key columns have other names (``trade_date``, ``ticker``): named in the spec,
it builds the same cache as the panel renamed, from parquet (streamed), CSV and frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cache import CacheSpec, check_source, load_or_build, source_columns
from cache import _dense as dense
from cache.errors import CacheError
from cache.testing import make_panel, panel_spec

OWN = {"date": "trade_date", "code": "ticker"}


def _same(a, b) -> None:  # noqa: ANN001
    for name in ("features", "targets", "present", "dates", "codes"):
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


@pytest.mark.parametrize("kind", ["parquet", "csv", "frame"])
def test_named_key_columns_build_the_same_cache(tmp_path: Path, kind: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dense, "CHUNK_ROWS", 7)  # parquet: several chunks, each renamed
    panel = make_panel(n_stocks=6, n_dates=9)
    reference = load_or_build(panel, tmp_path / "ref", panel_spec())
    own = panel.rename(OWN)
    source: object = own
    if kind != "frame":
        source = tmp_path / f"own.{kind}"
        own.write_parquet(source) if kind == "parquet" else own.write_csv(source)
    spec = panel_spec(date_column="trade_date", code_column="ticker")
    built = load_or_build(source, tmp_path / "own", spec)  # type: ignore[arg-type]
    _same(built, reference)
    assert built.manifest["spec"]["key_columns"] == ["trade_date", "ticker"]
    assert "key_columns" not in reference.manifest["spec"]  # default keys: keys unchanged
    assert CacheSpec.from_dict(built.manifest["spec"]) == spec
    found = check_source(source, spec)  # type: ignore[arg-type]
    assert (found["dates"], found["codes"]) == (9, 6)
    if kind != "frame":
        assert source_columns(source, spec)[:2] == ["date", "code"]  # type: ignore[arg-type]


def test_a_mapped_column_that_is_absent_or_clashes_is_one_line(tmp_path: Path) -> None:
    panel = make_panel(n_stocks=4, n_dates=5)
    path = tmp_path / "p.parquet"
    panel.write_parquet(path)
    spec = panel_spec(date_column="trade_date")
    with pytest.raises(CacheError, match=r"has no column 'trade_date' \(date_column\)"):
        load_or_build(path, tmp_path / "c", spec)
    panel.with_columns(panel["date"].alias("trade_date")).write_parquet(path)
    with pytest.raises(CacheError, match=r"has both 'trade_date' \(date_column\) and a column "
                       r"'date'"):
        load_or_build(path, tmp_path / "c", spec)
    panel.rename(OWN).write_parquet(path)  # unnamed: the error says how to name them
    with pytest.raises(CacheError, match="set date_column / code_column"):
        load_or_build(path, tmp_path / "c", panel_spec())
    assert not (tmp_path / "c").exists() or not [p for p in (tmp_path / "c").iterdir()
                                                 if not p.name.startswith(".")]
    with pytest.raises(CacheError, match="date_column and code_column are both 'k'"):
        panel_spec(date_column="k", code_column="k")
    with pytest.raises(CacheError, match="is also a feature or target"):
        panel_spec(code_column="f0", feature_columns=("f0", "f1"))
