"""Exceptions shared by every package of the service.

A :class:`UserError` is a mistake the user can fix (bad flag, bad study file, bad data);
the CLIs print it as one line ``error: ...`` and exit with code 2, without a traceback.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from cache.errors import NoSpace


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


class DiskFull(NoSpace):
    """Not enough free space where a file must go: an environment fault, not the trial's.

    Raised by the disk-space check before a checkpoint or a model is written (the bytes are
    known then); the message names the path, the bytes needed and free, and what to free.
    The cache raises its parent, ``cache.errors.NoSpace``, before a build writes its arrays.
    """
