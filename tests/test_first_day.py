"""The new user's first day in docs/signal.md works as printed: each command of its transcripts,
run in order on such a panel, exits as shown (2 where an ``error:`` line follows it, else 0)
and prints each line shown (up to its first figure, whitespace aside)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl

from tests.conftest import REPO
from trainers.atft_gat.synthetic import generate_market

SECTION = "### A new user's first day, command by command"


def transcript() -> list[tuple[str, list[str]]]:
    """(command, lines shown after it) of every ``console`` block of the section."""
    text = (REPO / "docs" / "signal.md").read_text()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ")] if "\n## " in section else section
    steps: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif steps:
                steps[-1][1].append(line)
    return steps


def shown_prefix(line: str) -> str:
    """The line up to its first figure, whitespace collapsed."""
    flat = " ".join(line.split())
    cut = re.search(r"[+-]?\d", flat)
    return flat[:cut.start()] if cut else flat


def panels(root: Path) -> None:
    """Day one's panel (``ticker`` for ``code``, an empty 20-day target) and the same market
    three months later."""
    market = generate_market(n_stocks=24, n_dates=320, seed=0, difficulty="realistic")
    days = market["date"].unique().sort()
    first = market.filter(pl.col("date") <= days[259]).rename({"code": "ticker"})
    first = first.with_columns(pl.lit(None, dtype=pl.Float64).alias("ret_20d"))
    first.write_parquet(root / "panel.parquet")
    market.drop("ret_20d").rename({"code": "ticker"}).write_parquet(root / "panel_later.parquet")


def test_the_first_day_transcript_runs_as_printed(tmp_path: Path) -> None:
    steps = transcript()
    assert [cmd.split()[2] for cmd, _ in steps if cmd.startswith("python -m")] == [
        "hpo.init", "hpo.init", "hpo.run", "hpo.monitor"]
    panels(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}  # the embedded database
    env["PYTHONPATH"] = str(REPO)
    for command, shown in steps:
        argv = command.split()
        if argv[0] == "python" and argv[1] == "-c":
            argv = [sys.executable, "-c", command.split(" ", 2)[2].strip('"')]
        else:
            argv = [sys.executable, *argv[1:]]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        out = done.stdout + done.stderr
        expected = 2 if shown and shown[0].startswith("error:") else 0
        assert done.returncode == expected, (command, out[-2000:])
        flat = " ".join(out.split())
        for line in shown:
            if line.strip() in ("", "..."):
                continue
            assert shown_prefix(line) in flat, (command, line, out[-3000:])
    assert (tmp_path / "output" / "mine" / "monitor" / "monitor.parquet").is_file()
