"""What went wrong, in three kinds, and what each does to the study.

- **User errors** (``trainers.errors.UserError``): a mistake in the study file, the flags or
  the data. One line ``error: ...``, exit 2, nothing written (the checks run before anything
  is); a trial a user error stopped keeps its ``fail_reason``.
- **Environment faults** (:func:`environment_fault`): the machine, not the trial: a full disk
  (``ENOSPC``, a quota), a read-only or vanished filesystem. The running trial is not charged:
  it is queued again (FAIL with ``fail_reason`` and the user attr ``environment_fault``, plus a
  WAITING retry that resumes from its newest checkpoint), and the worker stops at the first
  one with one line naming the resource and exit 1; after the fault is fixed, the same command
  resumes. A database unreachable past its retries is the worker's own outage path
  (``hpo.worker``): exit 1, the trial left to the heartbeat retry.
- **Trial faults**: anything else a trial raises (a bug, a configuration that cannot train).
  FAIL with ``fail_reason`` (and ``traceback.txt``); the study goes on.

``hpo.status`` counts the three apart.
"""

from __future__ import annotations

import errno
from pathlib import Path

from cache.errors import NoSpace, free_bytes, is_disk_full
from trainers.errors import DiskFull

ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class EnvironmentFault(Exception):
    """The trial stopped on an environment fault; it was queued again. ``str`` is the line."""


def environment_fault(exc: BaseException, *, where: Path | None = None) -> str | None:
    """The one-line description of ``exc`` (or of an exception it wraps) when it is an
    environment fault, else None. ``where``: the directory the failed work wrote under, named
    when the error itself carries no path (every write of the service goes through
    ``cache.errors.writing``, which gives it one)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, NoSpace):  # the service's own check: the bytes are known
            return str(current)
        if isinstance(current, OSError) and (current.errno in ENVIRONMENT_ERRNOS
                                             or is_disk_full(current)):
            return describe_os_error(current, where=where)
        current = current.__cause__ or current.__context__
    return None


def describe_os_error(exc: OSError, *, where: Path | None = None) -> str:
    """An ENOSPC / EDQUOT / EROFS as one line naming the path and the free bytes there (the
    file the error names, else a file under ``where``)."""
    path = exc.filename or (f"a file under {where}" if where is not None else "a file")
    probe = Path(exc.filename) if exc.filename else where
    if exc.errno == errno.EROFS:
        return (f"read-only filesystem at {path}; make it writable (or choose another "
                "--output) and rerun the same command")
    free = free_bytes(probe) if probe is not None else None
    return str(DiskFull(path, needed=None, free=free))
