"""What every ``python -m hpo.<command>`` shares on its command line: the parser (a bad flag is
one line, exit 2), the ``--study`` / ``--storage`` / ``--output`` flags and their words, and
the rule that a ``UserError`` anywhere in a command is one line ``error: ...`` on stderr and
exit code 2, never a traceback."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from trainers.cli import OneLineParser
from trainers.errors import UserError

EXIT_OK, EXIT_USER = 0, 2
STORAGE_HELP = "storage URL (default: $HPO_STORAGE, else sqlite:///<output>/hpo.db)"
STUDY_HELP = "the study name in storage (e.g. demo)"
OUTPUT_HELP = "the study's output directory (default: output)"

Main = Callable[[list[str] | None], int]


def command_parser(name: str, description: str) -> OneLineParser:
    """The parser of ``python -m hpo.<name>``."""
    return OneLineParser(prog=f"python -m hpo.{name}", description=description)


def add_study_flags(p: OneLineParser, *, study: str | None = STUDY_HELP,
                    output: str = OUTPUT_HELP, output_default: Path | None = Path("output"),
                    storage: str = STORAGE_HELP) -> None:
    """``--study`` (required; left out when ``study`` is None), ``--storage`` and ``--output``
    with this project's defaults; ``study``/``output``/``storage`` are their help texts."""
    if study is not None:
        p.add_argument("--study", required=True, help=study)
    p.add_argument("--storage", default=None, help=storage)
    p.add_argument("--output", type=Path, default=output_default, help=output)


def one_line_errors(main: Main) -> Main:
    """``main`` with every ``UserError`` it raises printed as ``error: <message>`` on stderr
    and returned as exit code 2."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USER

    return wrapped


def log_to_stderr(*, force: bool = False) -> None:
    """Progress lines as ``HH:MM:SS message`` on stderr (stdout stays the command's answer);
    ``force``: replace the handlers a library already installed."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr, force=force)
