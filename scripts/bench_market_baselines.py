"""How hard is the synthetic market? The planted oracle and the best raw feature, over seeds.

Run from the repository root:

    python -m scripts.bench_market_baselines                     # ~1 minute on 2 CPU cores
    python -m scripts.bench_market_baselines --difficulty easy --seeds 8

For each size and seed it generates the market, takes the last ``--report-fraction`` of its
dates as the report period (what a study would validate or test on) and scores there, with
``trainers.atft_gat.synthetic.market_baselines``:

* the oracle on the 1-day target over the whole sample (the calibration figure), and the best
  raw feature chosen and scored on the whole sample (in-sample: flattered by the choice);
* the oracle (the planted expected return, ``oracle_forecast``) on the 1-day target, and on
  the 20-day target with the non-overlapping Sharpe convention;
* the best raw feature, chosen with its sign by mean RankIC on the earlier dates (a purge of
  ``horizon`` dates before the report period), then scored on the report period.

Prints, and writes to ``output/bench/market_baselines_<difficulty>.json``, the mean and the
standard deviation over seeds of each figure, and which feature was chosen how often. The
seed-to-seed spread is the sampling error of one study's figures on one market.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO))

from trainers.atft_gat.synthetic import (  # noqa: E402
    DEFAULT_DIFFICULTY,
    DIFFICULTIES,
    generate_market,
    market_baselines,
)
from trainers.metrics import Scoring, panel_metrics  # noqa: E402

SIZES = ((100, 360), (500, 750), (1000, 1500))  # the demo study, the README, production
FIGURES = ("rank_ic", "rank_icir", "sharpe")


def one_market(
    n_stocks: int, n_dates: int, seed: int, difficulty: str, report_fraction: float
) -> dict[str, object]:
    frame, oracle = generate_market(
        n_stocks=n_stocks, n_dates=n_dates, seed=seed, difficulty=difficulty, return_oracle=True
    )
    days = np.unique(frame["date"].to_numpy())
    report = days[int(len(days) * (1 - report_fraction)) :]
    # The whole sample: the calibration figure, with the least sampling error.
    whole = panel_metrics(
        frame["date"].to_numpy(), oracle["oracle"].to_numpy(), frame["ret_1d"].to_numpy()
    )
    out: dict[str, object] = {"oracle_1d_all_dates": {k: whole[k] for k in FIGURES}}
    # The best raw feature chosen and scored on the whole sample: in-sample, so flattered.
    in_sample = market_baselines((frame, oracle), days)["best_feature"]
    assert in_sample["chosen_on"] == "report dates (in-sample)"
    out["best_feature_1d_all_dates_in_sample"] = {k: in_sample[k] for k in FIGURES}
    out["best_feature_1d_all_dates_in_sample"]["name"] = (
        "-" if in_sample["sign"] < 0 else ""
    ) + in_sample["name"]
    for horizon in (1, 20):
        base = market_baselines((frame, oracle), report, scoring=Scoring(horizon=horizon))
        best = base["best_feature"]
        out[f"oracle_{horizon}d"] = {k: base["oracle"][k] for k in FIGURES}
        out[f"best_feature_{horizon}d"] = {k: best[k] for k in FIGURES}
        out[f"best_feature_{horizon}d"]["name"] = ("-" if best["sign"] < 0 else "") + best["name"]
    return out


def summarise(runs: list[dict[str, object]]) -> dict[str, object]:
    summary: dict[str, object] = {}
    for key in runs[0]:
        block: dict[str, object] = {}
        for figure in FIGURES:
            values = [float(r[key][figure]) for r in runs]  # type: ignore[index]
            block[figure] = {
                "mean": round(statistics.fmean(values), 4),
                "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None,
            }
        if key.startswith("best_feature"):
            block["chosen"] = dict(Counter(r[key]["name"] for r in runs))  # type: ignore[index]
        summary[key] = block
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--difficulty", default=DEFAULT_DIFFICULTY, choices=sorted(DIFFICULTIES))
    parser.add_argument("--seeds", type=int, default=16, help="markets per size (seeds 0..N-1)")
    parser.add_argument("--report-fraction", type=float, default=0.4)
    parser.add_argument(
        "--sizes", nargs="*", default=[f"{s}x{d}" for s, d in SIZES], help="STOCKSxDATES ..."
    )
    parser.add_argument("--out", default="output/bench")
    args = parser.parse_args(argv)
    result: dict[str, object] = {
        "difficulty": args.difficulty,
        "seeds": args.seeds,
        "report_fraction": args.report_fraction,
    }
    for size in args.sizes:
        n_stocks, n_dates = (int(v) for v in size.split("x"))
        runs = [
            one_market(n_stocks, n_dates, seed, args.difficulty, args.report_fraction)
            for seed in range(args.seeds)
        ]
        result[size] = summarise(runs)
        print(size, json.dumps(result[size]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"market_baselines_{args.difficulty}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
