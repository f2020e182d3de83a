"""How often does the leakage guard refuse a planted leak, and how often a genuine feature?

Run from the repository root:

    python -m scripts.bench_leak_guard                      # 20 and 500 stocks, 10 seeds each
    python -m scripts.bench_leak_guard --stocks 20 500 2000 --seeds 20 --n-dates 1500

No training: each seed builds a panel of daily returns, plants every case below as a feature
column, and runs the guard (``trainers.atft_gat.leakage``) with the defaults of a file panel
(``leak_threshold`` 0.2, ``leak_sharpe`` 6) on every date, targets of 1, 5, 10 and 20 dates.

The returns: ``r[t + 1] = sum_k b_k g_k[t] + noise`` per stock (independent stocks, unit
variance); the label of date t is ``r[t + 1]`` (its h-date target the sum of ``r[t + 1 ..
t + h]``). Genuine features ``g_k`` are known at t: AR(1) per stock with persistence
``p`` in {0, 0.3, 0.5, 0.9} and a true RankIC of 0.02, 0.05 or 0.08 with the label. Leaks:

* ``target+noise 0.05`` / ``0.1``: the label plus noise, at that RankIC;
* ``weak 0.12z``: ``0.12 * zscore(label) + N(0, 1)`` (RankIC about 0.1);
* ``off-by-one mom L`` (L = 20, 60, 120, 250): the L-date momentum that includes the next
  close (``r[t - L + 2 .. t + 1]``);
* ``fwd sum 10`` / ``20``: the next 10 or 20 returns summed.

Then the real-data-like panel of ``scripts.bench_net`` (a simulated price path with market,
sector and idiosyncratic noise, a momentum and short-term-reversal premium; features from past
returns only): every feature must pass. Prints the refusal rate of each case by panel size
and writes ``output/bench/leak_guard.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO))

HORIZONS = (1, 5, 10, 20)
PERSISTENCES = (0.0, 0.3, 0.5, 0.9)
GENUINE_ICS = (0.02, 0.05, 0.08)
MOMENTA = (20, 60, 120, 250)
WARM = 260  # dates before the guard's first date, so every momentum is defined


def genuine_name(p: float, ic: float) -> str:
    return f"genuine p={p:g} ic={ic:g}"


def leak_names() -> list[str]:
    return (["target+noise 0.05", "target+noise 0.1", "weak 0.12z"]
            + [f"off-by-one mom {n}" for n in MOMENTA] + ["fwd sum 10", "fwd sum 20"])


def _z(a: np.ndarray) -> np.ndarray:
    """Cross-sectional z-score of each row of a (dates, stocks) array."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True)


def planted_panel(n_stocks: int, n_dates: int, seed: int
                  ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(features by name, (dates, stocks, len(HORIZONS)) targets) of one seed's panel: the
    module docstring's genuine features and leaks. ``n_dates`` dates after WARM."""
    rng = np.random.default_rng(seed)
    total = WARM + n_dates + max(HORIZONS) + 1
    genuine: dict[str, np.ndarray] = {}
    drift = np.zeros((total, n_stocks))
    for p in PERSISTENCES:
        for ic in GENUINE_ICS:
            g = np.empty((total, n_stocks))
            g[0] = rng.standard_normal(n_stocks)
            for t in range(1, total):
                g[t] = p * g[t - 1] + np.sqrt(1.0 - p * p) * rng.standard_normal(n_stocks)
            genuine[genuine_name(p, ic)] = g
            drift[1:] += ic * g[:-1]  # known at t, earns at t + 1
    share = sum(ic * ic for ic in GENUINE_ICS) * len(PERSISTENCES)
    r = drift + np.sqrt(1.0 - share) * rng.standard_normal((total, n_stocks))
    cum = np.vstack([np.zeros((1, n_stocks)), np.cumsum(r, axis=0)])  # cum[t] = r[0..t-1]
    targets = np.full((total, n_stocks, len(HORIZONS)), np.nan)
    for k, h in enumerate(HORIZONS):
        targets[:total - h, :, k] = cum[1 + h:total + 1] - cum[1:total + 1 - h]
    label = targets[:, :, 0]
    leaks: dict[str, np.ndarray] = {}
    z = np.nan_to_num(_z(np.nan_to_num(label)))
    for ic in (0.05, 0.1):
        leaks[f"target+noise {ic:g}"] = z + np.sqrt(1.0 / ic ** 2 - 1.0) * rng.standard_normal(
            z.shape)
    leaks["weak 0.12z"] = 0.12 * z + rng.standard_normal(z.shape)
    for n in MOMENTA:
        mom = np.full((total, n_stocks), np.nan)
        mom[n - 2:total - 1] = cum[n:total + 1] - cum[:total + 1 - n]  # r[t - n + 2 .. t + 1]
        leaks[f"off-by-one mom {n}"] = mom
    for h in (10, 20):
        leaks[f"fwd sum {h}"] = targets[:, :, HORIZONS.index(h)]
    features = {**genuine, **leaks}
    keep = slice(WARM, WARM + n_dates)
    return ({name: f[keep] for name, f in features.items()}, targets[keep])


def guard(features: dict[str, np.ndarray], targets: np.ndarray, *, threshold: float = 0.2,
          sharpe: float = 6.0, horizons: tuple[int, ...] = HORIZONS) -> set[str]:
    """The names the guard refuses on every date of the panel (a date older is read for the
    first one, so the guard starts at its second date)."""
    import torch

    from trainers.atft_gat.leakage import check_features, guard_scores
    from trainers.errors import UserError

    names = tuple(features)
    x = torch.as_tensor(np.stack([features[n] for n in names], axis=-1))
    y = torch.as_tensor(targets)
    present = torch.ones(x.shape[:2], dtype=torch.bool)
    dates = np.arange(1, x.shape[0] - max(horizons))
    scores = guard_scores(x, y, present, dates, features=names,
                          targets=tuple(f"ret_{h}d" for h in horizons), horizons=horizons,
                          timing_index=0)
    try:
        check_features(scores, threshold=threshold, allow=(), sharpe_ceiling=sharpe)
    except UserError as exc:
        text = str(exc)
        return {n for n in names if f"{n} (" in text}
    return set()


def real_like(n_stocks: int, n_dates: int, seed: int) -> tuple[dict[str, np.ndarray],
                                                                  np.ndarray]:
    """The real-data-like panel of ``scripts.bench_net``, as guard inputs."""
    import polars as pl

    from scripts.bench_net import real_like_panel

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "real_like.parquet"
        real_like_panel(path, n_stocks=n_stocks, n_dates=n_dates, seed=seed)
        frame = pl.read_parquet(path).sort("date", "code")
    shape = (frame["date"].n_unique(), n_stocks)
    features = {c: frame[c].to_numpy().reshape(shape) for c in frame.columns
                if c.startswith("f_")}
    # the file panel's execution lag of 1: the features of t trade the return of t + 1 -> t + 2
    label = frame["ret_1d"].to_numpy().reshape(shape)
    lagged = np.full_like(label, np.nan)
    lagged[:-1] = label[1:]
    return features, lagged[:, :, None]


def run(stocks: list[int], seeds: int, n_dates: int) -> dict[str, Any]:
    cases = [genuine_name(p, ic) for p in PERSISTENCES for ic in GENUINE_ICS] + leak_names()
    refused = {n: {c: 0 for c in cases} for n in stocks}
    real = {n: {} for n in stocks}
    for n in stocks:
        for seed in range(seeds):
            features, targets = planted_panel(n, n_dates, seed)
            for name in guard(features, targets):
                refused[n][name] += 1
            if seed < 2:  # the real-like panel is slower to simulate
                feats, label = real_like(n, n_dates, seed)
                for name in feats:
                    real[n][name] = real[n].get(name, 0)
                for name in guard(feats, label, horizons=(1,)):
                    real[n][name] += 1
    return {"cases": cases, "refused": refused, "seeds": seeds, "real_like": real,
            "real_like_seeds": min(seeds, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stocks", type=int, nargs="+", default=[20, 500])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--n-dates", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("output/bench"))
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    result = run(args.stocks, args.seeds, args.n_dates)
    result.update(n_dates=args.n_dates, seconds=round(time.perf_counter() - t0, 1))
    leaks = set(leak_names())
    print(f"refusal rate over {args.seeds} seeds, {args.n_dates} dates "
          "(leaks should be 1, genuine 0)")
    print(f"{'case':28s}" + "".join(f"{n:>10d}" for n in args.stocks))
    for case in result["cases"]:
        kind = "leak" if case in leaks else "genuine"
        rates = "".join(f"{result['refused'][n][case] / args.seeds:10.2f}" for n in args.stocks)
        print(f"{case:28s}{rates}   {kind}")
    print(f"real-data-like panel ({result['real_like_seeds']} seeds), features refused:")
    for n in args.stocks:
        bad = {k: v for k, v in result["real_like"][n].items() if v}
        print(f"  {n} stocks: {bad or 'none'}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "leak_guard.json").write_text(json.dumps(result, indent=1))
    print(f"{result['seconds']} s; wrote {args.out / 'leak_guard.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
