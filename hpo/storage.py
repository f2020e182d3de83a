"""Storage URL -> Optuna RDB storage, with pooling, heartbeats and retry of dead trials.

Optuna's RDB storage is the coordination engine for many workers and hosts; this module only
chooses its settings: ``pool_pre_ping`` (PostgreSQL restarts), a small pool per process (many
workers must not exhaust the server's connection limit), heartbeats, and the callback that
re-enqueues a trial whose worker died.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from trainers.errors import UserError

ENV_VAR = "HPO_STORAGE"
DEFAULT_DB_NAME = "hpo.db"

# Each worker process needs ~2 connections (the trial loop + the heartbeat thread); a pool of
# 2 with 2 overflow keeps 25 workers under PostgreSQL's default limit of 100 clients.
PG_POOL_SIZE = 2
PG_MAX_OVERFLOW = 2
CONNECT_TIMEOUT_S = 10


def resolve_url(cli_url: str | None, output_dir: Path) -> str:
    """``--storage``, else ``$HPO_STORAGE``, else an embedded SQLite file under ``output_dir``."""
    url = cli_url or os.environ.get(ENV_VAR) or ""
    if url:
        return url
    return f"sqlite:///{(Path(output_dir) / DEFAULT_DB_NAME).resolve()}"


_PASSWORD = re.compile(r"(?P<head>[a-z0-9+]+://[^:/@]*:)(?P<pw>[^@]*)(?P<tail>@)", re.I)


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``: safe to print, log or store."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", url)


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("postgresql"):
        return {
            "pool_pre_ping": True,
            "pool_size": PG_POOL_SIZE,
            "max_overflow": PG_MAX_OVERFLOW,
            "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S},
        }
    if url.startswith("sqlite"):
        # Several worker processes share the file: wait for the write lock instead of failing.
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def _short_reason(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__).strip()


def check_sqlite_parent(url: str) -> None:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.parent.exists():
            raise UserError(f"storage {url!r}: directory {str(path.parent)!r} does not exist; "
                            "create it or choose another path")


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = 2,
) -> Any:
    """Open (and create the schema of) the study storage at ``url``.

    Connection problems become a ``UserError`` naming the masked URL; the password never
    appears in the message.
    """
    import optuna
    import sqlalchemy.exc

    if "://" not in url:
        raise UserError(f"storage {url!r} is not a URL; use e.g. sqlite:///output/hpo.db or "
                        "postgresql+psycopg2://user:password@host:5432/dbname")
    check_sqlite_parent(url)
    callback = None
    if heartbeat_interval is not None:
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=_engine_kwargs(url),
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=callback,
        )
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        raise UserError(f"cannot connect to storage {mask_url(url)}: {_short_reason(exc)}; "
                        "check the host, port, database name and credentials") from None
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ImportError,
            ValueError) as exc:
        raise UserError(f"bad storage URL {mask_url(url)}: {_short_reason(exc)}") from None
