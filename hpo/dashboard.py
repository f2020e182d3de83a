"""``python -m hpo.dashboard``: optuna-dashboard on a study's storage and artifact store.

Example:
    python -m hpo.dashboard --study production
    python -m hpo.dashboard --storage postgresql+psycopg2://hpo@db:5432/hpo --port 8081

The dashboard shows each study's metric names, its description (the study note written when
the study was created), every trial's user attrs (history, epoch, worker, fail_reason...) and
the trial artifacts the objective uploaded to ``<output>/artifacts``: metrics.json, a learning
curve and the checkpoint. optuna-dashboard has no login, so it listens on 127.0.0.1 unless
``--host`` says otherwise; to share it, put an authenticating reverse proxy in front.
Exit codes: 0 stopped with Ctrl-C, 2 a user error (one line ``error: ...``).
"""

from __future__ import annotations

import argparse
import errno
import logging
import socketserver
import sys
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from hpo import attrs
from hpo.artifacts import artifact_dir, artifact_store, has_study_note, save_study_note
from hpo.cli import EXIT_OK, add_study_flags, command_parser, log_to_stderr, one_line_errors
from hpo.loading import load_existing_study, open_existing_storage
from hpo.storage import mask_url, resolve_url
from trainers.errors import UserError

log = logging.getLogger("hpo")

DEFAULT_HOST = "127.0.0.1"  # no login in optuna-dashboard: never listen on a network by default
DEFAULT_PORT = 8080
DEFAULT_OUTPUT = Path("output")


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """The dashboard's page polls several API routes at once: serve them concurrently."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """wsgiref logs every request to stderr; the dashboard polls every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        pass


def output_of(study: optuna.Study) -> Path | None:
    """The ``--output`` directory the study's workers used, from the newest trial's
    ``output_dir`` attr (``<output>/<study>/trial_<n>``) when its artifacts/ is on this host."""
    for trial in reversed(study.get_trials(deepcopy=False)):
        trial_dir = trial.user_attrs.get(attrs.OUTPUT_DIR)
        if trial_dir:
            root = Path(trial_dir).parent.parent
            return root if artifact_dir(root).is_dir() else None
    return None


def build_app(url: str, *, output: Path | None = None,
              study: str | None = None) -> tuple[Any, int | None, Path]:
    """The dashboard's WSGI app, the id of ``study`` (None when none was named) and the
    output directory whose ``artifacts/`` it serves.

    Without ``output``, the named study's own output directory is used when it is on this
    host (so ``hpo.run --output elsewhere`` needs no repeat of the flag), else ``output``.
    An existing study without a dashboard note (created before notes were written) gets its
    description note here, so every study reads the same in the browser.
    """
    import optuna_dashboard

    storage = open_existing_storage(url)
    study_id = None
    if study is not None:
        loaded = load_existing_study(storage, study, url)
        study_id = loaded._study_id
        output = output or output_of(loaded)
        _backfill_note(loaded)
    output = output or DEFAULT_OUTPUT
    app = optuna_dashboard.wsgi(storage, artifact_store=artifact_store(output, create=False))
    return app, study_id, output


def _backfill_note(study: optuna.Study) -> None:
    import sqlalchemy.exc

    try:
        if not has_study_note(study):
            save_study_note(study)
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as exc:
        # A read-only database user can still watch; the note is a nicety.
        log.warning("could not save the study note of %s: %s", study.study_name,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def bind(app: Any, *, host: str, port: int) -> WSGIServer:
    """Listen on ``host:port``; a port in use or an unknown host is a UserError."""
    try:
        return make_server(host, port, app, server_class=_ThreadingServer,
                           handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use; stop the other server or "
                            "choose another port with --port") from None
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --host "
                        "and --port") from None


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "dashboard",
        "Serve optuna-dashboard for the studies in a storage, with their trial "
        "artifacts. Example: python -m hpo.dashboard --study demo --port 8080")
    p.add_argument("--study", default=None,
                   help="check that this study exists and print its page's address (e.g. demo)")
    add_study_flags(p, study=None, output_default=None,
                    output="directory holding the embedded database and artifacts/ (default: "
                    "the --study's own output directory when it is on this host, else output)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port to listen on (default: {DEFAULT_PORT}), e.g. --port 8081")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default: {DEFAULT_HOST}; the dashboard has no "
                   "login, so use 0.0.0.0 only behind an authenticating proxy)")
    return p


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_to_stderr()
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    url = resolve_url(args.storage, args.output or DEFAULT_OUTPUT)
    app, study_id, output = build_app(url, output=args.output, study=args.study)
    server = bind(app, host=args.host, port=args.port)
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    page = f"http://{shown}:{port}/dashboard/"
    if study_id is not None:
        page += f"studies/{study_id}"
    print(f"optuna-dashboard for {mask_url(url)} at {page} (artifacts: "
          f"{artifact_dir(output).resolve()}); press Ctrl-C to stop", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who can reach this port can read and edit the "
                    "studies (the dashboard has no login)", args.host)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
