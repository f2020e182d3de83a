"""The cache's errors.

A :class:`CacheError` is a mistake the user can fix (a bad source, a damaged or outdated
cache), with a one-line message that says how. ``python -m cache.build``/``cache.info``
print it as ``error: ...`` and exit with code 2; the trainers and ``hpo`` treat it like their
own ``UserError``. It is a ``ValueError`` so code that uses the cache alone can catch it
without importing anything from here.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os as _os
import shutil as _shutil
from collections.abc import Iterator


class CacheError(ValueError):
    """A problem in the cache's input, with a message that says how to fix it."""


class NoSpace(OSError):
    """Not enough free space where a file must go (``errno.ENOSPC``): an environment fault,
    not the user's. Raised before a build writes its arrays (the bytes are known then); the
    message names the path, the bytes needed and free, and what to do."""

    def __init__(self, path: str, *, needed: int | None, free: int | None) -> None:
        import errno

        self.path, self.needed, self.free = str(path), needed, free
        need = f"{needed:,} bytes needed, " if needed is not None else ""
        have = f"{free:,} free" if free is not None else "free space unknown"
        super().__init__(errno.ENOSPC, f"no space left on device for {path} ({need}{have}); "
                         "free space on that filesystem and rerun the same command")

    def __str__(self) -> str:
        return str(self.args[1])


def check_free_space(path: str, needed: int, *, error: type[NoSpace] = NoSpace) -> None:
    """Raise ``error`` (a :class:`NoSpace`) naming ``path`` when the filesystem holding it (its
    directory when ``path`` is a file about to be written) has fewer than ``needed`` free
    bytes."""
    import os
    import shutil

    where = path if os.path.isdir(path) else os.path.dirname(path) or "."
    free = shutil.disk_usage(where).free
    if free < needed:
        raise error(path, needed=needed, free=free)


# An OS error that is the machine's, not the program's: a full disk, a quota, a read-only
# filesystem. Arrow reports a full disk as an OSError without errno, by its message.
FULL_ERRNOS = (_errno.ENOSPC, _errno.EDQUOT)
FULL_MESSAGES = ("No space left on device", "Disk quota exceeded")


def free_bytes(path: str | _os.PathLike[str]) -> int | None:
    """Free bytes on the filesystem holding ``path`` (its nearest existing parent)."""
    current = _os.path.abspath(path)
    while True:
        try:
            return _shutil.disk_usage(current).free
        except OSError:
            parent = _os.path.dirname(current)
            if parent == current:
                return None
            current = parent


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and (exc.errno in FULL_ERRNOS
                                         or any(m in str(exc) for m in FULL_MESSAGES))


@contextlib.contextmanager
def writing(path: str | _os.PathLike[str], *, needed: int | None = None) -> Iterator[None]:
    """Every write the service makes goes through this: a full disk or quota becomes a
    :class:`NoSpace` naming ``path`` (the file being written), its filesystem's free bytes and
    the bytes it tried to write (``needed``, where known); a read-only filesystem an OSError
    carrying ``path``. A write call (``os.write``, Arrow's writers) does not know its path;
    this does, so no fault line says "?"."""
    try:
        yield
    except NoSpace:
        raise
    except OSError as exc:
        if is_disk_full(exc):
            raise NoSpace(str(path), needed=needed, free=free_bytes(path)) from exc
        if exc.errno == _errno.EROFS and not exc.filename:
            raise OSError(exc.errno, exc.strerror or "Read-only file system", str(path)) \
                from exc
        raise
