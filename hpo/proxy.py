"""``python -m hpo.proxy``: one storage proxy in front of the study database for many workers.

Example (on the database host, or any host the workers reach):

    python -m hpo.proxy --storage postgresql+psycopg2://hpo@db:5432/hpo --host 0.0.0.0
    python -m hpo.run --study production --storage grpc://proxy-host:13000   # on every worker

It is Optuna's own gRPC storage proxy (``optuna.storages.run_grpc_proxy_server``) over the
service storage (``hpo.storage.open_storage``: pooling, SQLite's write-ahead log), wrapped in
Optuna's trial cache as ``optuna.storages.get_storage`` wraps it. Every worker and command
accepts ``--storage grpc://HOST:PORT`` (or ``$HPO_STORAGE``); the proxy holds a handful of
database connections whatever the number of workers, where each direct worker holds up to four.
Heartbeats go through it as trial system attrs (``hpo.storage.remote``), so a dead worker's trial
is failed and retried as on PostgreSQL. The proxy keeps no state of its own: restart it and
the workers carry on once it answers again.

Exit codes: 0 never (it serves until stopped), 2 a user error (one line), 130 stopped by
Ctrl-C, 143 by SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from hpo.cli import add_study_flags, command_parser, log_to_stderr, one_line_errors
from hpo.storage.remote import DEFAULT_PORT
from trainers.errors import UserError

log = logging.getLogger("hpo")


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "proxy",
        "Serve the study storage to many workers through Optuna's gRPC storage "
        "proxy; workers use --storage grpc://HOST:PORT. Example: python -m hpo.proxy --storage "
        "postgresql+psycopg2://hpo@db:5432/hpo --host 0.0.0.0 --port 13000")
    add_study_flags(p, study=None,
                    storage="the database behind the proxy (default: $HPO_STORAGE, else "
                    "sqlite:///<output>/hpo.db); not a grpc:// URL",
                    output="where the default SQLite file lives (default: output)")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to listen on (default: 127.0.0.1; 0.0.0.0 for every "
                   "interface)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"the port to listen on (default: {DEFAULT_PORT})")
    return p


def serve(url: str, *, host: str, port: int) -> None:
    """Serve the storage at ``url`` on ``host:port`` until a signal (raises ``_Stop``)."""
    import optuna
    from optuna.storages import run_grpc_proxy_server

    from hpo.storage import mask_url, open_storage

    if url.startswith("grpc://"):
        raise UserError(f"--storage {url} is itself a proxy; give the database URL")
    storage = optuna.storages.get_storage(open_storage(url))
    log.info("storage proxy for %s on grpc://%s:%d", mask_url(url), host, port)
    run_grpc_proxy_server(storage, host=host, port=port)


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_to_stderr(force=True)
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a port; use 1-65535")
    from hpo.storage import resolve_url

    def stop(signum: int, _frame: object) -> None:
        raise _Stop(signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve(resolve_url(args.storage, args.output), host=args.host, port=args.port)
    except _Stop as exc:
        log.info("storage proxy stopped (%s)", signal.Signals(exc.signum).name)
        return 128 + exc.signum
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
