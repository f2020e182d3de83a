"""What an error out of the study storage means: the database is out, or the write is bad.

Read by :mod:`hpo.storage` (opening a storage), :mod:`hpo.storage.service` (the storage class,
which rides out short outages) and :mod:`hpo.worker` (which rides out long ones). It imports
nothing of ``hpo``, so those modules depend on it and not on each other; SQLAlchemy is
imported only when an error is classified.
"""

from __future__ import annotations

from collections.abc import Callable


def caused_by(exc: BaseException | None, test: Callable[[BaseException], bool]) -> bool:
    """Whether ``exc`` or anything in its cause/context chain passes ``test``.

    The error that surfaces is often not the one that matters: Optuna wraps SQLAlchemy errors
    raised inside its transactions in ``StorageInternalError``, and can replace an error of its
    ``tell`` by another one raised while handling it (an UnboundLocalError, an AssertionError).
    Each error is looked at once, so a chain that loops back on itself ends.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if test(exc):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def is_connection_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an error in its cause/context chain) means "the database cannot be
    reached right now", as opposed to "this write is bad".

    Connection-level: an ``OperationalError`` / ``InterfaceError`` that SQLAlchemy marked as a
    disconnect, or that was raised while connecting (no statement). A constraint or data error
    (IntegrityError, DataError, ProgrammingError: a value too long, a duplicate key) and a
    statement that failed on a live connection (SQLite's "database is locked" after its
    timeout) are not: retrying them cannot help.
    """
    import sqlalchemy.exc

    def unreachable(e: BaseException) -> bool:
        return (isinstance(e, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError)
                and (e.connection_invalidated or e.statement is None))

    return caused_by(exc, unreachable)


def short_reason(exc: BaseException) -> str:
    """The first line of the database's own message (what a log line needs)."""
    exc = exc.__cause__ or exc
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__).strip()
