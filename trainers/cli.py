"""Standalone entry point shared by ``python -m trainers.<workload>``: one training, no study."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from trainers.config import add_arguments, from_mapping, namespace_values, to_mapping
from trainers.context import TrialContext, atomic_write_json
from trainers.errors import StopRequested, TrialFailed, TrialPruned, UserError
from trainers.registry import get_workload


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line ``error: ...`` (exit 2), like every other mistake."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def main(workload_name: str, argv: list[str] | None = None) -> int:
    workload = get_workload(workload_name)
    parser = OneLineParser(
        prog=f"python -m trainers.{workload_name}",
        description=f"{workload.description} One plain training run, no study. "
        f"Example: python -m trainers.{workload_name} --epochs 2 --output runs/try1",
    )
    parser.add_argument("--output", type=Path, default=Path("output") / "standalone" /
                        workload_name, help="directory for metrics.json, checkpoint, history")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--cache-root", type=Path, default=Path("output") / "cache",
                        help="where data caches live, shared with studies (default: output/cache)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in --output if there is one")
    add_arguments(parser, workload.config_cls)
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        config = from_mapping(workload.config_cls, namespace_values(ns, workload.config_cls),
                              where="flags")
        if not ns.resume:
            (ns.output / "checkpoint.pt").unlink(missing_ok=True)
        ctx = TrialContext(ns.output, seed=ns.seed, cache_dir=ns.cache_root)
        metrics = workload.train(config, ctx)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (TrialFailed, TrialPruned) as exc:
        print(f"error: training ended early: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, StopRequested):
        print("interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    atomic_write_json(ns.output / "metrics.json",
                      {"metrics": metrics, "config": to_mapping(config), "attrs": ctx.attrs})
    print(json.dumps(metrics, indent=2))
    return 0
