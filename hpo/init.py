"""``python -m hpo.init --panel FILE``: a study file for your panel, in one command.

Example:

    python -m hpo.init --panel data/panel.parquet --out studies/mine.toml
    python -m hpo.run --study studies/mine.toml

It reads the panel (parquet or CSV, the schema of docs/workloads.md "Your own panel": ``date``,
``code``, numeric features, forward-return targets ``ret_<h>d``) and reports **every** problem
at once, each with its fix: a missing ``date`` or ``code`` column (a column that looks like
one, e.g. ``trade_date`` or ``ticker``, is not a problem: the study file names it as ``[data]
date_column`` / ``code_column``), dates that do not parse, duplicated (date, code) rows,
non-numeric feature columns, no target or an empty one, too few dates for a train | validation
| test split, and no column of realised past returns for the correlation graph. With none it
writes a commented study file that runs on the panel: the horizons its targets have (the
shortest scored), a ``graph_source`` it found (the feature that equals each stock's
previous-date ``ret_1d``, or one named like it), an execution lag of 1, a validation window
sized to the panel, a CPU-sized preset (``max_steps_per_epoch``), the net Sharpe objective (the
default on a file panel) with a cost list, and a small search space including the book. An
existing ``--out`` is never overwritten without ``--force``; nothing is written when there is a
problem (exit 2).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from hpo.cli import EXIT_OK, command_parser, one_line_errors
from trainers.context import atomic_write_bytes
from trainers.errors import UserError


def writer(workload: str | None) -> Any:
    """The ``init_study`` of ``workload``, or of the one workload that has it."""
    from trainers.registry import get_workload, workload_names

    able = [n for n in workload_names() if get_workload(n).init_study is not None]
    if workload is None:
        if len(able) != 1:
            raise UserError(f"name the workload with --workload ({', '.join(able)})")
        workload = able[0]
    found = get_workload(workload)
    if found.init_study is None:
        raise UserError(f"workload {workload!r} cannot write a study file from a panel; "
                        f"these can: {', '.join(able)}")
    return found.init_study


def init(panel: Path, out: Path, *, force: bool = False, workload: str | None = None) -> Path:
    """Inspect ``panel`` and write its study file to ``out`` (module docstring)."""
    if out.suffix != ".toml":
        raise UserError(f"--out {out} must end in .toml")
    if out.exists() and not force:
        raise UserError(f"--out {out} exists; pass --force to replace it, or choose another")
    if not panel.is_file():
        raise UserError(f"--panel {panel} does not exist")
    name = re.sub(r"[^A-Za-z0-9_-]", "_", out.stem)
    text = writer(workload)(panel, name)
    atomic_write_bytes(out, text.encode(), durable=False)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "init",
        "Check a panel and write a study file that runs on it. Example: python -m "
        "hpo.init --panel data/panel.parquet --out studies/mine.toml")
    p.add_argument("--panel", required=True, type=Path,
                   help="the panel: parquet or CSV with date, code, features and ret_<h>d")
    p.add_argument("--out", type=Path, default=Path("studies/mine.toml"),
                   help="the study file to write (default: studies/mine.toml)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--workload", default=None,
                   help="the workload whose study file to write (default: the one that can)")
    return p


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = init(args.panel, args.out, force=args.force, workload=args.workload)
    print(f"wrote {out}; run it with: python -m hpo.run --study {out}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
