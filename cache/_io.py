"""Small helpers of the cache's CLIs and writers, kept here so the cache stands alone."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from cache.errors import writing


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line ``error: ...`` (exit 2), like every other mistake."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never half.

    Temp file in the same directory, rename over the target. With ``durable`` (checkpoints,
    caches) the file is fsynced before the rename and the directory after it, so the new file
    also survives a power loss; without it (files rebuilt from elsewhere) a killed process
    still leaves a whole file, and the fsyncs are saved.
    """
    atomic_write(path, lambda f: f.write(data), durable=durable, needed=len(data))


def atomic_write(path: Path, write: Callable[[BinaryIO], Any], *, durable: bool = True,
                 needed: int | None = None) -> None:
    """``write(file)`` into a temp file beside ``path``, then the rename (and fsyncs) of
    :func:`atomic_write_bytes` (for content too large to hold as one bytes object). A full
    disk names ``path`` and ``needed`` bytes (``cache.errors.writing``)."""
    path = Path(path)
    with writing(path, needed=needed):
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except FileNotFoundError:  # the directory is created on first use only
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if not durable:
            return
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj) + "\n").encode())
