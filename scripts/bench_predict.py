"""What a daily scoring job costs at the seed's size: ``hpo.predict``'s pipeline on a new date.

Run from the repository root:

    python -m scripts.bench_predict                              # 4,000 stocks x 300 features
    python -m scripts.bench_predict --stocks 500 --features 50   # a quick look

It writes a panel of ``--stocks`` x ``--dates`` x ``--features`` (random features, a past-return
column for the graph, no targets: today's rows have no future), saves an ATFT-GAT-FAN model
of the production study's shape (random weights: the cost does not depend on them) as a
trial's ``model.pt``, and times ``trainers.atft_gat.scoring.score_panel`` on the last date
(the daily job), then on the last 5 dates. Only the dates the windows and the graph need are
read: the rest of the history is never cached, and the graph is built for those dates only.
Prints a table and writes ``output/bench/predict.json``; the panel (gigabytes at the default
size) is deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO))


def write_panel(path: Path, *, stocks: int, dates: int, features: int, seed: int = 0) -> list[str]:
    """A random panel in date order, one row group per date; returns the feature names."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    days = np.arange(np.datetime64("2015-01-01"), np.datetime64("2030-01-01"))
    days = days[np.is_busday(days)][:dates]
    names = [f"f{i:03d}" for i in range(features - 1)] + ["f_ret_1d_past"]
    codes = pa.array([f"S{i:05d}" for i in range(stocks)])
    writer = None
    for day in days:
        x = rng.standard_normal((stocks, features), dtype=np.float32)
        x[:, -1] *= 0.02  # a daily return's scale
        table = pa.table({"date": pa.array(np.full(stocks, day)), "code": codes,
                          **{n: x[:, j] for j, n in enumerate(names)}})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()
    return names


def save_model(trial_dir: Path, names: list[str], *, hidden: int,
               source: str = "panel.parquet", **settings: object) -> None:
    """A trial's ``model.pt`` of the production study's shape (random weights) on ``names``;
    ``settings``: more of its TrainConfig."""
    import torch

    from trainers.atft_gat.config import TrainConfig
    from trainers.atft_gat.model import ATFTGATFAN
    from trainers.config import to_mapping

    config = TrainConfig(source=source, horizons=(1,), metric_horizon=1, hidden_size=hidden,
                         features=tuple(names), batch_size=4000, **settings)
    model = ATFTGATFAN(config.model_config(), n_features=len(names))
    trial_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "config": to_mapping(config),
                "feature_names": names, "feature_mean": torch.zeros(len(names)),
                "feature_std": torch.ones(len(names)), "with_graph": True},
               trial_dir / "model.pt")


def size_arguments(p: argparse.ArgumentParser, name: str) -> None:
    """The options of a seed-sized scoring benchmark: panel and model size, where it works
    and writes (``output/bench/<name>``), and whether it keeps its panel."""
    p.add_argument("--stocks", type=int, default=4000)
    p.add_argument("--features", type=int, default=300)
    p.add_argument("--hidden", type=int, default=64, help="the model's hidden size")
    p.add_argument("--dir", type=Path, default=Path(f"output/bench/{name}"))
    p.add_argument("--out", type=Path, default=Path(f"output/bench/{name}.json"))
    p.add_argument("--keep", action="store_true", help="keep the panel and the caches")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size_arguments(p, "predict")
    p.add_argument("--dates", type=int, default=250, help="dates of history in the panel")
    args = p.parse_args(argv)

    import torch

    from trainers.atft_gat.predict import load_trained
    from trainers.atft_gat.scoring import score_panel

    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    try:
        started = time.perf_counter()
        names = write_panel(args.dir / "panel.parquet", stocks=args.stocks, dates=args.dates,
                            features=args.features)
        write_s = time.perf_counter() - started
        save_model(args.dir / "trial_0", names, hidden=args.hidden)
        trained = load_trained(args.dir / "trial_0")
        rows = {}
        for label, dates in (("last date (cold: cache and graph built)", "last"),
                             ("last date (warm: cache and graph reused)", "last"),
                             ("last 5 dates (cold for the 4 new ones)", "-5")):
            spec = dates
            if dates == "-5":
                import polars as pl

                days = pl.read_parquet(args.dir / "panel.parquet", columns=["date"])[
                    "date"].unique().sort()
                spec = f"{days[-5]}:{days[-1]}"
            t0 = time.perf_counter()
            scored = score_panel(trained, str(args.dir / "panel.parquet"), dates=spec,
                                 cache_dir=args.dir / "cache")
            seconds = time.perf_counter() - t0
            rows[label] = {"seconds": round(seconds, 2), "dates": len(scored.dates),
                           "seconds_per_date": round(seconds / len(scored.dates), 2),
                           "rows": scored.frame.height}
        report = {"stocks": args.stocks, "features": args.features, "dates": args.dates,
                  "hidden": args.hidden, "threads": torch.get_num_threads(),
                  "panel_write_s": round(write_s, 1), "runs": rows}
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{args.stocks} stocks x {args.features} features, {args.dates} dates of history, "
          f"hidden {args.hidden}, {report['threads']} threads")
    for label, row in rows.items():
        print(f"  {label:44s} {row['seconds']:8.2f} s  ({row['seconds_per_date']:.2f} s per "
              f"date, {row['rows']} rows)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
