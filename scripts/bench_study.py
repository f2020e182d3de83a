"""The small ATFT-GAT-FAN study the model-quality benchmarks run (``bench_selection_bias``,
``bench_net``, ``bench_cv``), as a mapping, and one fresh run of it through ``hpo.api``.

Cheap per trial (one small model, a few capped epochs), so that a dozen trials fit in
~15 minutes of a 2-core machine; the search space holds only settings that do not change the
cost of a trial, so trial times stay comparable. Each benchmark adds its own settings to the
mapping (its data, its objective, the book's search); ``run_fresh`` writes it with
``hpo.studyfile.dump_study`` and runs it in a folder of its own, deleted first.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

TRAINER = {"hidden_size": 16, "attn_heads": 2, "gat_heads": 2, "gat_layers": 1, "lookback": 10,
           "graph_k": 6, "warmup_steps": 5}
SPACE = {
    "lr": {"type": "float", "low": 3e-4, "high": 1e-2, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "rank_weight": {"type": "float", "low": 0.0, "high": 1.0},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
}


def synthetic_data(args: argparse.Namespace, market_seed: int) -> dict[str, Any]:
    """``[data]`` of the calibrated synthetic market of ``market_seed``."""
    return {"source": "synthetic", "n_stocks": args.n_stocks, "n_dates": args.n_dates,
            "market_seed": market_seed, "market_difficulty": "realistic", "purge": 20}


def small_study(name: str, description: str, args: argparse.Namespace, *,
                data: dict[str, Any], metric: str = "sharpe",
                space: dict[str, Any] | None = None, startup: int | None = None
                ) -> dict[str, Any]:
    """The study mapping: ``args.n_trials`` trials selecting on validation ``metric`` with
    TPE (``startup`` random trials first, default a third), the small trainer with
    ``args.epochs`` x ``args.steps`` steps of ``args.batch_size``, searching ``space``
    (default ``SPACE``; its order is the order TPE draws in, so a benchmark keeps its own)."""
    return {
        "name": name, "description": description, "workload": "atft_gat",
        "n_trials": args.n_trials,
        "objectives": [{"metric": metric, "direction": "maximize"}],
        "sampler": {"name": "tpe", "seed": args.seed,
                    "n_startup_trials": startup or max(2, args.n_trials // 3)},
        "storage": {"heartbeat_interval": 30, "grace_period": 600},
        "data": {**data, "val_fraction": 0.2, "test_fraction": 0.2},
        "trainer": {"epochs": args.epochs, "max_steps_per_epoch": args.steps,
                    "batch_size": args.batch_size, **TRAINER},
        "search_space": dict(space or SPACE),
    }


def run_fresh(raw: dict[str, Any], workdir: Path, *, what: str) -> tuple[Any, Path, float]:
    """Run the study ``raw`` afresh in ``workdir`` (deleted first) through ``hpo.api``;
    returns the study, its output folder and the wall seconds. A study that does not end
    with exit code 0 ends the benchmark, naming ``what``."""
    from hpo import api
    from hpo.studyfile import dump_study

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    study_path = workdir / f"{raw['name']}.toml"
    study_path.write_text(dump_study(raw))
    output = workdir / "out"
    url = f"sqlite:///{output / 'hpo.db'}"
    started = time.perf_counter()
    code = api.run_study(study_path, output=output, storage=url, quiet=True)
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"error: the study of {what} ended with exit code {code}")
    return api.load_study(raw["name"], output=output, storage=url), output, elapsed
