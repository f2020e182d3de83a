"""What the morning job costs at the seed's size: ``hpo.monitor``'s work on one new date.

Run from the repository root:

    python -m scripts.bench_monitor                              # 4,000 stocks x 300 features
    python -m scripts.bench_monitor --stocks 500 --features 50   # a quick look

It writes a panel of ``--stocks`` x ``--features`` with ``--history`` dates (train, validation
and test of a study: 50 / 25 / 25 %) and ``--live`` dates after them, random features, a
past-return column for the graph and the realised 1-day return as the target; saves an
ATFT-GAT-FAN model of the production study's shape (random weights: the cost does not depend on
them) whose study panel is that file; then times, each morning in a fresh process (imports,
file reads, cache and graph builds included: cold):

1. the first morning: every live date scored, the two baselines fitted on the study's panel
   (its feature cache built first) and kept;
2. the next morning, one date appended to the panel: what a daily job pays. Only the dates after
   the last one scored are scored (with the book's 1-day horizon and execution lag, the newest
   dates are not realised yet, so they are scored again until they are), the kept baselines are
   reused;
3. the same morning without the kept state (what every morning cost before it was kept): every
   live date scored again, the baselines refitted, side by side with 2.

It times ``trainers.atft_gat.monitor.live`` (the workload's part of ``hpo.monitor``: scoring,
baselines, the book's per-date figures); the command adds the history merge, the table and a
small chart (well under a second). Prints a table and writes ``output/bench/monitor.json``; the
panel (gigabytes at the default size) is deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO))

from scripts.bench_predict import save_model, size_arguments  # noqa: E402


def write_panel(path: Path, *, stocks: int, dates: int, features: int, seed: int = 0) -> None:
    """A random panel in date order, one row group per date: features ``f000...``, the past
    1-day return ``f_ret_1d_past`` and the target ``ret_1d`` (the next date's return; NaN on
    the last date, as in a real panel)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    days = np.arange(np.datetime64("2015-01-01"), np.datetime64("2040-01-01"))
    days = days[np.is_busday(days)][:dates]
    names = [f"f{i:03d}" for i in range(features - 1)]
    codes = pa.array([f"S{i:05d}" for i in range(stocks)])
    returns = rng.standard_normal((dates + 1, stocks), dtype=np.float32) * 0.02
    writer = None
    for t, day in enumerate(days):
        x = rng.standard_normal((stocks, features - 1), dtype=np.float32)
        target = returns[t + 1] if t + 1 < dates else np.full(stocks, np.nan, np.float32)
        table = pa.table({"date": pa.array(np.full(stocks, day)), "code": codes,
                          **{n: x[:, j] for j, n in enumerate(names)},
                          "f_ret_1d_past": returns[t], "ret_1d": target})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def morning(folder: Path, state: bool) -> dict:
    """One morning in this process: ``live`` on the panel, timed."""
    import polars as pl

    from trainers.atft_gat.monitor import live
    from trainers.atft_gat.predict import load_trained

    started = time.perf_counter()
    trained = load_trained(folder / "trial_0")
    meta = json.loads((folder / "study.json").read_text())
    validation = pl.read_parquet(folder / "validation.parquet")
    out = live(trained, str(folder / "panel.parquet"), folder / "cache", meta["split"],
               validation, trained.config.scoring, state=folder / "state" if state else None)
    seconds = time.perf_counter() - started
    model = out["series"]["model"]
    return {"seconds": round(seconds, 2), "live_dates": model.height,
            "scored_dates": out["scored_dates"],
            "last_scored": str(model["date"].max())}


def _in_fresh_process(folder: Path, state: bool) -> dict:
    code = ("import json, sys; from pathlib import Path; from scripts.bench_monitor import "
            f"morning; print(json.dumps(morning(Path({str(folder)!r}), {state!r})))")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=True)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["process_seconds"] = round(time.perf_counter() - t0, 2)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size_arguments(p, "monitor")
    p.add_argument("--history", type=int, default=300, help="the study's dates")
    p.add_argument("--live", type=int, default=20, help="dates after the study, first morning")
    args = p.parse_args(argv)

    import numpy as np
    import polars as pl
    import torch

    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    folder = args.dir.resolve()
    panel = folder / "panel.parquet"
    rows: dict[str, dict] = {}
    try:
        t0 = time.perf_counter()
        total = args.history + args.live + 1
        write_panel(folder / "grown.parquet", stocks=args.stocks, dates=total,
                    features=args.features)
        grown = pl.read_parquet(folder / "grown.parquet")
        days = grown["date"].unique().sort()
        # The first morning's panel: the next date is not there yet, so its row of the
        # last date has no realised return either.
        first = grown.filter(pl.col("date") < days[-1]).with_columns(
            pl.when(pl.col("date") == days[-2]).then(None).otherwise(pl.col("ret_1d"))
            .alias("ret_1d"))
        first.write_parquet(panel, row_group_size=args.stocks)
        del first
        write_s = time.perf_counter() - t0
        names = [c for c in grown.columns if c not in ("date", "code", "ret_1d")]
        save_model(folder / "trial_0", names, hidden=args.hidden, source=str(panel), purge=2)
        h = args.history
        cut = [0, h // 2, h // 2 + h // 4, h - 1]
        split = {"train": [str(days[cut[0]]), str(days[cut[1] - 1])],
                 "val": [str(days[cut[1] + 2]), str(days[cut[2] - 1])],
                 "test": [str(days[cut[2] + 2]), str(days[cut[3]])]}
        (folder / "study.json").write_text(json.dumps({"split": split}))
        rng = np.random.default_rng(1)
        val = grown.filter(pl.col("date").is_between(days[cut[1] + 2], days[cut[2] - 1]))
        val.select("date", "code", pl.Series("pred", rng.standard_normal(val.height)),
                   pl.col("ret_1d").alias("target")).write_parquet(
            folder / "validation.parquet")
        del val
        rows["first morning (every live date, baselines fitted)"] = _in_fresh_process(
            folder, True)
        grown.write_parquet(panel, row_group_size=args.stocks)  # the new date arrives
        del grown
        rows["next morning, one new date (kept scores and fit)"] = _in_fresh_process(
            folder, True)
        rows["next morning without kept state (before)"] = _in_fresh_process(folder, False)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    daily = rows["next morning, one new date (kept scores and fit)"]["process_seconds"]
    before = rows["next morning without kept state (before)"]["process_seconds"]
    report = {"stocks": args.stocks, "features": args.features, "history": args.history,
              "live": args.live, "hidden": args.hidden, "threads": torch.get_num_threads(),
              "panel_write_s": round(write_s, 1), "runs": rows,
              "speedup_daily": round(before / daily, 2), "target_s": 60,
              "target_met": daily < 60}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{args.stocks} stocks x {args.features} features, a study of {args.history} dates, "
          f"{args.live} live dates, hidden {args.hidden}, {report['threads']} threads")
    for label, row in rows.items():
        print(f"  {label:52s} {row['process_seconds']:8.2f} s  (live {row['seconds']:.2f} s, "
              f"{row['scored_dates']} date(s) scored, {row['live_dates']} live dates to "
              f"{row['last_scored']})")
    print(f"  the daily morning: {daily:.1f} s against {before:.1f} s before "
          f"({report['speedup_daily']}x); target < 60 s: "
          f"{'met' if report['target_met'] else 'not met'}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
