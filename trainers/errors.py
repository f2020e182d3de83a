"""Exceptions shared by every package of the service.

A :class:`UserError` is a mistake the user can fix (bad flag, bad study file, bad data);
the CLIs print it as one line ``error: ...`` and exit with code 2, without a traceback.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input, with a message that says how to fix it."""


class TrialFailed(Exception):
    """The trial cannot finish (e.g. out of memory below the minimum batch).

    The study goes on; the reason is stored on the trial as the ``fail_reason`` user attr.
    """


class TrialPruned(Exception):
    """The trial ended early on purpose (divergence, pruning rule); ``reason`` says why."""


class StopRequested(Exception):
    """A signal (SIGINT/SIGTERM) asked the trial to stop; the trial will be retried later."""


class DiskFull(OSError):
    """Not enough free space where a file must go: an environment fault, not the trial's.

    Raised by the disk-space check before a checkpoint is written (the bytes are known then),
    and the shape every ENOSPC takes once it reaches ``hpo``: the path, the bytes needed when
    known, the bytes free. The message says what to free and where.
    """

    def __init__(self, path: str, *, needed: int | None, free: int | None) -> None:
        import errno

        self.path, self.needed, self.free = str(path), needed, free
        need = f"{needed:,} bytes needed, " if needed is not None else ""
        have = f"{free:,} free" if free is not None else "free space unknown"
        super().__init__(errno.ENOSPC, f"no space left on device for {path} ({need}{have}); "
                         "free space on that filesystem and rerun the same command")

    def __str__(self) -> str:
        return str(self.args[1])
