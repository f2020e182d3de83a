"""``python -m cache.build`` and ``python -m cache.info``, run in-process."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import polars as pl
import pytest

from cache import FORMAT_VERSION
from cache import build as build_cli
from cache import info as info_cli
from cache.feature_cache import cache_dirs, open_cache
from cache.testing import make_panel


@pytest.fixture
def parquet(tmp_path: Path) -> Path:
    path = tmp_path / "panel.parquet"
    make_panel(n_features=4).write_parquet(path)
    return path


def test_build_prints_the_cache_and_reuses_it(parquet: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "caches"
    argv = [str(parquet), "--out", str(out), "--features", "f3,f1", "--nan-policy", "mask",
            *TARGETS]
    assert build_cli.main(argv) == 0
    first = capsys.readouterr()
    (cache_dir,) = cache_dirs(out)
    assert first.out == f"{cache_dir}  (20 rows x 2 features, 4 dates, 5 codes)\n"
    assert "building cache" in first.err
    fc = open_cache(cache_dir)
    assert fc.feature_names == ("f3", "f1") and fc.features.shape == (4, 5, 2)
    assert fc.manifest["spec"]["nan_policy"] == "mask"

    assert build_cli.main(argv) == 0
    again = capsys.readouterr()
    assert again.out == first.out and f"reusing cache {fc.key}" in again.err


TARGETS = ("--targets", "ret_1d,ret_5d,ret_10d,ret_20d")


@pytest.mark.parametrize("argv,message", [
    (["{missing}", *TARGETS], "error: source {missing} does not exist, so its cache key cannot be "
                    "checked\n"),
    (["{parquet}", "--features", "f0,nope", *TARGETS],
     "error: parquet {parquet} is missing column(s) nope; expected date, code, ret_1d, "
     "ret_5d, ret_10d, ret_20d and the features f0, nope; "
     "found date, code, f0, f1, f2, f3, ret_1d, ret_5d, ret_10d, ret_20d\n"),
    (["{parquet}"], "error: parquet {parquet}: name its target columns (the forward returns "
     "to predict), e.g. CacheSpec(target_columns=('ret_1d',)) or python -m cache.build "
     "--targets ret_1d; a file has no default targets\n"),
    (["synthetic:n_stocks"], "error: synthetic option 'n_stocks' is not name=value; e.g. "
                             "synthetic:n_stocks=500,n_dates=750,seed=0\n"),
])
def test_user_errors_are_one_line_and_exit_2(argv: list[str], message: str, parquet: Path,
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    names = {"missing": tmp_path / "gone.parquet", "parquet": parquet}
    argv = [a.format(**names) for a in argv] + ["--out", str(tmp_path / "c")]
    assert build_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] + "\n" == message.format(**names)
    assert cache_dirs(tmp_path / "c") == []


def test_argparse_rejects_bad_flags_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_cli.main(["x.parquet", "--nan-policy", "drop"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'drop'" in capsys.readouterr().err


def test_help_documents_every_option_with_an_example(capsys: pytest.CaptureFixture[str],
                                                     ) -> None:
    parser = build_cli.build_parser()
    for action in parser._actions:
        assert action.help, f"{action.dest} has no help text"
    with pytest.raises(SystemExit):
        build_cli.main(["--help"])
    text = capsys.readouterr().out
    assert "python -m cache.build synthetic:n_stocks=500,n_dates=750,seed=0" in text
    with pytest.raises(SystemExit):
        info_cli.main(["--help"])
    assert "python -m cache.info output/cache" in capsys.readouterr().out


def test_synthetic_source_calls_the_generator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[dict[str, object]] = []

    def generate_market(*, n_stocks: int, n_dates: int, seed: int, **options: object,
                        ) -> pl.DataFrame:
        calls.append({"n_stocks": n_stocks, "n_dates": n_dates, "seed": seed, **options})
        return make_panel(n_stocks=n_stocks, n_dates=n_dates, seed=seed)

    fake = types.ModuleType("trainers.atft_gat.synthetic")
    fake.generate_market = generate_market  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "trainers.atft_gat.synthetic", fake)
    argv = ["synthetic:n_stocks=6,n_dates=3,seed=2,noise=0.5", "--out", str(tmp_path)]
    assert build_cli.main(argv) == 0
    assert calls == [{"n_stocks": 6, "n_dates": 3, "seed": 2, "noise": 0.5}]
    assert "(18 rows x 3 features, 3 dates, 6 codes)" in capsys.readouterr().out
    (cache_dir,) = cache_dirs(tmp_path)
    assert open_cache(cache_dir).manifest["source"]["id"] == (
        "synthetic:n_stocks=6,n_dates=3,seed=2,noise=0.5")


def test_synthetic_generator_errors_are_user_errors(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    def generate_market(*, n_stocks: int = 3) -> pl.DataFrame:
        raise ValueError(f"n_stocks must be >= 4, got {n_stocks}")

    fake = types.ModuleType("trainers.atft_gat.synthetic")
    fake.generate_market = generate_market  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "trainers.atft_gat.synthetic", fake)
    assert build_cli.main(["synthetic:n_stocks=2", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: synthetic source {'n_stocks': 2}: n_stocks must be >= 4, got 2")
    assert build_cli.main(["synthetic:colour=red", "--out", str(tmp_path)]) == 2
    assert "unexpected keyword argument 'colour'" in capsys.readouterr().err
    assert cache_dirs(tmp_path) == []


def test_info_summarises_one_cache_and_lists_a_root(parquet: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "caches"
    assert build_cli.main([str(parquet), "--out", str(out), *TARGETS]) == 0
    (cache_dir,) = cache_dirs(out)
    capsys.readouterr()

    assert info_cli.main([str(cache_dir)]) == 0
    text = capsys.readouterr().out
    assert f"key        {cache_dir.name}  (format version {FORMAT_VERSION})" in text
    assert "rows       20  (4 dates 2024-01-01 .. 2024-01-04, 5 codes)" in text
    assert ("layout     one batch per date: (4 dates, 5 codes, 4 features) float32, 20 of 20 "
            "(date, code) cells present") in text
    assert "features   4: f0, f1, f2, f3" in text
    assert "targets    4: ret_1d (20 rows known), ret_5d (20 rows known)," in text
    assert ("nan policy refuse (features; targets stay NaN); bad values: none; missing "
            "feature values 0 in 0 row(s)") in text
    assert "1 pass over the values" in text
    assert "features: fixed_size_list<item: float>[4]" in text

    assert info_cli.main([str(out)]) == 0
    line = capsys.readouterr().out
    assert line.startswith(cache_dir.name) and "20 rows x    4 features" in line

    assert info_cli.main([str(cache_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["key"] == cache_dir.name

    assert info_cli.main([str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'nothing'} is neither a feature "
                                       "cache nor a directory of caches\n")
