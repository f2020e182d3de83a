"""``python -m cache.info``: what a feature cache (or a directory of caches) holds."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cache._io import OneLineParser
from cache.errors import CacheError
from cache.feature_cache import MANIFEST_FILE, cache_dirs, read_manifest

EXAMPLE = """examples:
  python -m cache.info output/cache/3f9c2a...      one cache: manifest summary
  python -m cache.info output/cache                every cache under a root, one per line
  python -m cache.info output/cache/3f9c2a... --json
"""


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def summary(path: Path, manifest: dict[str, Any]) -> str:
    src = manifest["source"]
    spec = manifest["spec"]
    nan = manifest["nan"]
    features = manifest["feature_names"]
    shown = ", ".join(features[:10]) + (f", ... ({len(features) - 10} more)"
                                        if len(features) > 10 else "")
    bad = nan["bad_values"]
    bad_text = ", ".join(f"{k} {v}" for k, v in bad.items()) or "none"
    known = manifest.get("rows_with_target", {})
    passes = manifest.get("build_passes", 1)
    n_dates, n_codes = manifest["n_dates"], manifest["n_codes"]
    lines = [
        f"cache      {path}",
        f"key        {manifest['key']}  (format version {manifest['format_version']})",
        f"source     {src['kind']} {src['id']}  content hash {src['content_hash']}",
        f"built      {manifest['created_at']}  in {manifest['build_seconds']} s, {passes} "
        f"pass{'es' if passes != 1 else ''} over the values",
        f"rows       {manifest['rows']}  ({n_dates} dates "
        f"{manifest['first_date']} .. {manifest['last_date']}, {n_codes} codes)",
        f"layout     one batch per date: ({n_dates} dates, {n_codes} codes, "
        f"{manifest['n_features']} features) float32, {manifest['rows']} of "
        f"{n_dates * n_codes} (date, code) cells present",
        f"features   {manifest['n_features']}: {shown}",
        f"targets    {manifest['n_targets']}: "
        + ", ".join(f"{t} ({known[t]} rows known)" if t in known else t
                    for t in manifest["target_names"]),
        f"nan policy {spec['nan_policy']}"
        + (f" (fill {spec['fill_value']})" if "fill_value" in spec else "")
        + f" (features; targets stay NaN); bad values: {bad_text}; missing feature values "
        f"{nan['missing_feature_values']} in {nan['rows_with_missing_feature']} row(s)",
        "files      " + ", ".join(f"{k} {_mib(v)}" for k, v in manifest["files"].items()),
        "schema     " + ", ".join(f"{k}: {v}" for k, v in manifest["schema"].items()),
    ]
    return "\n".join(lines)


def _one_line(path: Path) -> str:
    try:
        m = read_manifest(path)
    except CacheError as exc:
        return f"{path.name}  unusable: {exc}"
    return (f"{m['key']}  {m['rows']:>10} rows x {m['n_features']:>4} features  "
            f"{m['created_at'][:19]}  {m['source']['kind']} {m['source']['id']}")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="python -m cache.info",
        description="Print the manifest summary of a feature cache, or list the caches "
        "under a cache root.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", metavar="PATH", type=Path,
                        help="a cache directory (holding manifest.json) or a cache root")
    parser.add_argument("--json", action="store_true", help="print the full manifest as JSON")
    args = parser.parse_args(argv)
    try:
        if (args.path / MANIFEST_FILE).is_file():
            manifest = read_manifest(args.path)
            print(json.dumps(manifest, indent=2) if args.json else summary(args.path, manifest))
            return 0
        caches = cache_dirs(args.path)
        if not caches:
            raise CacheError(f"{args.path} is neither a feature cache nor a directory of caches")
        for cache_dir in caches:
            print(_one_line(cache_dir))
    except CacheError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
