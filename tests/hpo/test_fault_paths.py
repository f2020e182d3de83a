"""Every write the service makes names its file when the disk is full: ``cache.errors.writing``
turns a path-less ENOSPC (``os.write``, an fsync, Arrow's writers) into a line with the path,
the free bytes there and, where known, the bytes it tried to write; no fault line says "?"."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from cache.errors import NoSpace, free_bytes, writing
from hpo.faults import environment_fault

FULL = OSError(errno.ENOSPC, "No space left on device")  # as os.write raises it: no filename


def _full(*_: Any, **__: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _line(exc: BaseException, where: Path | None = None) -> str:
    line = environment_fault(exc, where=where)
    assert line is not None and "?" not in line
    return line


def test_writing_names_the_path_the_bytes_and_the_free_space(tmp_path: Path) -> None:
    target = tmp_path / "predictions.parquet"
    with pytest.raises(NoSpace) as got, writing(target, needed=1234):
        raise OSError(errno.ENOSPC, "No space left on device")
    line = _line(got.value)
    assert str(target) in line and "1,234 bytes needed" in line
    assert got.value.free == free_bytes(tmp_path) and "free space unknown" not in line
    # Arrow reports a full disk without errno, in its message
    with pytest.raises(NoSpace), writing(target):
        raise OSError("IOError: No space left on device. Detail: [errno 28]")
    with pytest.raises(OSError) as ro, writing(target):
        raise OSError(errno.EROFS, "Read-only file system")
    assert ro.value.filename == str(target) and str(target) in _line(ro.value)
    with pytest.raises(FileNotFoundError), writing(target):  # other errors pass unchanged
        raise FileNotFoundError(errno.ENOENT, "gone", "x")


class _FullFile:
    def __init__(self, fd: int, *_: Any) -> None:
        import os

        os.close(fd)

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *_: Any) -> None:
        return None

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def _model_or_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import trainers.context as context

    monkeypatch.setattr(context.os, "fdopen", _FullFile)
    path = tmp_path / "trial_0" / "model.pt"
    context.write_with_checksum(path, b"x" * 4096)
    return path


def _cache_sidecar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from cache._io import atomic_write

    path = tmp_path / "cache" / "feature_rank_ic.npz"
    atomic_write(path, lambda f: _full())
    return path


def _cache_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from cache._writer import _write_synced

    path = tmp_path / "index.npz"
    _write_synced(path, lambda f: np.savez(f, x=np.zeros(3)) or _full())
    return path


def _export_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import os

    from hpo.export import write_csv

    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(value=1.0))
    monkeypatch.setattr(os, "fdopen", _FullFile)
    path = tmp_path / "trials.csv"
    write_csv(study, path)
    return path


def _tear_sheet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import trainers.context as context
    from trainers.context import atomic_write_bytes

    monkeypatch.setattr(context.os, "fdopen", _FullFile)
    path = tmp_path / "tear_sheet.html"
    atomic_write_bytes(path, b"<html>", durable=False)
    return path


@pytest.mark.parametrize("write", [_model_or_report, _cache_sidecar, _cache_index, _export_csv,
                                   _tear_sheet])
def test_each_kind_of_write_names_its_file(write: Any, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(OSError) as got:
        write(tmp_path, monkeypatch)
    line = _line(got.value)
    assert line.startswith("no space left on device for ")
    assert str(tmp_path) in line and "free" in line


def test_a_pathless_error_names_the_output_directory(tmp_path: Path) -> None:
    line = _line(FULL, where=tmp_path / "trial_3")
    assert f"a file under {tmp_path / 'trial_3'}" in line and "free space unknown" not in line


# -- the same on a real full filesystem -------------------------------------------------------
@pytest.fixture
def full_disk(tmpfs) -> Path:  # type: ignore[no-untyped-def]
    """A 4 MB tmpfs filled to leave 256 KB."""
    mount = tmpfs(4)
    (mount / "filler").write_bytes(b"\0" * (4 * 1024 * 1024 - 256 * 1024))
    return mount


def _real_model(disk: Path) -> Path:
    from trainers.context import atomic_write_bytes

    path = disk / "out" / "demo" / "trial_0" / "model.pt"
    atomic_write_bytes(path, b"w" * (1024 * 1024))
    return path


def _real_predictions(disk: Path) -> Path:
    import polars as pl

    from trainers.atft_gat.outputs import write_predictions

    path = disk / "out" / "demo" / "trial_0" / "predictions.parquet"
    rng = np.random.default_rng(0)
    n = 200_000
    write_predictions(path, {"date": np.repeat(np.arange(100), n // 100),
                             "code": np.tile(np.arange(n // 100).astype(str), 100),
                             "pred": rng.normal(size=n), "target": rng.normal(size=n)})
    assert pl.read_parquet(path).height == n  # not reached
    return path


def _real_cache_file(disk: Path) -> Path:
    from cache._io import atomic_write

    path = disk / "out" / "cache" / "abc" / "graph.npz"
    atomic_write(path, lambda f: np.savez(f, x=np.random.default_rng(0).normal(size=200_000)))
    return path


def _real_export(disk: Path) -> Path:
    from hpo.export import write_csv

    study = optuna.create_study()
    for i in range(3000):
        study.add_trial(optuna.trial.create_trial(value=float(i),
                                                  user_attrs={"note": "x" * 200}))
    path = disk / "out" / "demo" / "trials.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(study, path)
    return path


@pytest.mark.parametrize("write", [_real_model, _real_predictions, _real_cache_file,
                                   _real_export])
def test_a_real_full_disk_names_the_file_of_each_write(write: Any, full_disk: Path) -> None:
    with pytest.raises(OSError) as got:
        write(full_disk)
    line = _line(got.value)
    assert line.startswith("no space left on device for ") and str(full_disk) in line
    assert "free space unknown" not in line
    leftovers = [p for p in full_disk.rglob("*") if p.is_file() and p.name != "filler"]
    assert all(p.stat().st_size == 0 for p in leftovers) or not leftovers  # no half file
