"""``python -m cache.build``: build (or reuse) the feature cache of a panel."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cache._io import OneLineParser
from cache.core import build_cache
from cache.errors import CacheError
from cache.feature_cache import open_cache
from cache.spec import DEFAULT_TARGETS, NAN_POLICIES, CacheSpec

DEFAULT_OUT = Path("output") / "cache"
EXAMPLE = """examples:
  python -m cache.build data/panel.parquet --out output/cache --nan-policy mask
  python -m cache.build synthetic:n_stocks=500,n_dates=750,seed=0 --out output/cache
  python -m cache.build panel.csv --features mom_5,vol_20,turnover
"""


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty name; give a,b,c")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m cache.build",
        description="Build the memory-mapped Arrow feature cache of a (date, code) panel, or "
        "reuse it when the source and feature config are unchanged. Prints the cache "
        "directory.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="SOURCE",
                        help="a .parquet or .csv panel (date, code, features, targets), or "
                        "synthetic:n_stocks=N,n_dates=N,seed=N[,option=value...]")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"cache root; the cache goes to OUT/<key> (default: {DEFAULT_OUT})")
    parser.add_argument("--features", type=_names, default=None, metavar="A,B,C",
                        help="feature columns in this order (default: every numeric column "
                        "that is not date, code or a target, nor looks forward-looking: "
                        "ret_<h>d or a word starting fwd/forward/future/label/target)")
    parser.add_argument("--targets", type=_names, default=None, metavar="A,B,C",
                        help="target columns; required for a parquet/CSV source (synthetic "
                             f"default: {','.join(DEFAULT_TARGETS)})")
    parser.add_argument("--nan-policy", choices=NAN_POLICIES, default="refuse",
                        help="NaN/inf/null in a feature: refuse (error naming the columns "
                        "and counts), mask (keep the row and the NaN; the trainer imputes and "
                        "masks each value), fill (replace with --fill-value). A missing target "
                        "is always kept as NaN, never filled. Default: refuse")
    parser.add_argument("--fill-value", type=float, default=0.0,
                        help="replacement under --nan-policy fill (default: 0)")
    parser.add_argument("--source-id", default=None,
                        help="name of the source in logs and manifest (default: its path)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if a cache with the same key exists")
    parser.add_argument("--rehash", action="store_true",
                        help="hash the source file even if its size and times are unchanged")
    return parser


@contextmanager
def _log_to_stderr() -> Iterator[None]:
    """Show the cache's INFO log (reuse / build and why) on stderr for this call only."""
    logger = logging.getLogger("cache")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with _log_to_stderr():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        spec = CacheSpec(feature_columns=args.features, target_columns=args.targets,
                         nan_policy=args.nan_policy, fill_value=args.fill_value)
        path = build_cache(args.source, args.out, spec, source_id=args.source_id,
                           force=args.force, rehash=args.rehash)
        fc = open_cache(path)
    except CacheError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m = fc.manifest
    print(f"{path}  ({m['rows']} rows x {m['n_features']} features, {m['n_dates']} dates, "
          f"{m['n_codes']} codes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
