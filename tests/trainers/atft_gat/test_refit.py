"""Refit (``trainers.atft_gat.refit``): the chosen configuration trained again through a day."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from tests.trainers.atft_gat.test_train import TINY
from trainers.atft_gat.config import TrainConfig
from trainers.atft_gat.data import study_split
from trainers.atft_gat.refit import refit, refit_epochs
from trainers.atft_gat.synthetic import generate_market
from trainers.atft_gat.train import train
from trainers.context import TrialContext
from trainers.errors import UserError


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model.pt", map_location="cpu", weights_only=False)["model"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_refit_on_the_trials_own_fit_dates_is_that_trial_bit_for_bit(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    config = TrainConfig(**{**TINY, "epochs": 2})
    trial = TrialContext(tmp_path / "trial", seed=7, cache_dir=tmp_path / "cache")
    train(config, trial)
    market = generate_market(n_stocks=config.n_stocks, n_dates=config.n_dates,
                             seed=config.market_seed, difficulty=config.market_difficulty)
    dates = market["date"].unique().sort().to_numpy()
    split = study_split(config, dates)
    # Through the day before validation: the refit's last fit date is the trial's.
    through = str(dates[split.val[0] - 1])[:10]
    ctx = TrialContext(tmp_path / "refit", seed=7, cache_dir=tmp_path / "cache")
    result = refit(config, ctx, through=through, epochs=2)
    assert result.fit[1] == trial.attrs["split"]["fit"][1]
    assert result.fit_dates == trial.attrs["data"]["train_dates"]
    assert _same(_weights(trial.output_dir), _weights(ctx.output_dir))
    # another seed is another model
    other = TrialContext(tmp_path / "other", seed=8, cache_dir=tmp_path / "cache")
    refit(config, other, through=through, epochs=2)
    assert not _same(_weights(ctx.output_dir), _weights(other.output_dir))


def test_a_refit_reads_nothing_after_through_and_learns_from_every_date_before(
        tmp_path: Path) -> None:
    torch.set_num_threads(1)
    market = generate_market(n_stocks=24, n_dates=140, seed=2)
    dates = market["date"].unique().sort()
    through = dates[109]
    clean, spoiled = tmp_path / "clean.parquet", tmp_path / "spoiled.parquet"
    market.write_parquet(clean)
    features = [c for c in market.columns if c.startswith(("f_", "ret_"))]
    # After `through` every number is noise: a refit that read any of it would differ.
    noise = np.random.default_rng(0)
    market.with_columns([
        pl.when(pl.col("date") > through).then(
            pl.lit(pl.Series(noise.normal(size=market.height)))).otherwise(pl.col(c)).alias(c)
        for c in features]).write_parquet(spoiled)
    config = {**TINY, "n_stocks": None, "n_dates": None}
    config = {k: v for k, v in config.items() if v is not None}
    runs = {}
    for name, source in (("clean", clean), ("spoiled", spoiled)):
        ctx = TrialContext(tmp_path / name, seed=1, cache_dir=tmp_path / f"cache_{name}")
        runs[name] = refit(TrainConfig(**{**config, "source": str(source)}), ctx,
                           through=str(through), epochs=1)
    assert _same(_weights(tmp_path / "clean"), _weights(tmp_path / "spoiled"))
    result = runs["clean"]
    assert result.through == str(through)
    # the last fit date is `through` minus the purge; the first has a full lookback
    assert result.fit == (str(dates[TINY["lookback"] - 1]), str(dates[109 - TINY["purge"]]))
    later = refit(TrainConfig(**{**config, "source": str(clean)}),
                  TrialContext(tmp_path / "later", seed=1, cache_dir=tmp_path / "cache_clean"),
                  through=None, epochs=1)
    assert later.fit_dates > result.fit_dates
    assert not _same(_weights(tmp_path / "clean"), _weights(tmp_path / "later"))


def test_refit_epochs_follow_the_selection_else_the_epochs_run() -> None:
    assert refit_epochs({"selected_epoch": 3}, 5) == 3
    assert refit_epochs({}, 4) == 4
    with pytest.raises(UserError, match="no finished epoch"):
        refit_epochs({}, 0)


def test_a_through_date_before_any_fit_date_is_refused(tmp_path: Path) -> None:
    market = generate_market(n_stocks=24, n_dates=140, seed=2)
    first = market["date"].min()
    with pytest.raises(UserError, match="refit through a later date"):
        refit(TrainConfig(**TINY), TrialContext(tmp_path / "r", seed=0,
                                                cache_dir=tmp_path / "cache"),
              through=str(first), epochs=1)


def test_a_stopped_refit_resumes_to_the_uninterrupted_model(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    config = TrainConfig(**{**TINY, "epochs": 2})
    whole = TrialContext(tmp_path / "whole", seed=3, cache_dir=tmp_path / "cache")
    refit(config, whole, through=None, epochs=2)
    # Stopped after its first epoch (its checkpoint on disk), then run again to the end.
    part = TrialContext(tmp_path / "part", seed=3, cache_dir=tmp_path / "cache")
    refit(config, part, through=None, epochs=1)
    again = TrialContext(tmp_path / "part", seed=3, cache_dir=tmp_path / "cache")
    refit(config, again, through=None, epochs=2)
    assert [h["epoch"] for h in again.history] == [1, 2]
    assert _same(_weights(tmp_path / "whole"), _weights(tmp_path / "part"))


def test_a_walk_forward_trial_refits_with_its_last_folds_epochs() -> None:
    folds = [{"fold": 1, "epochs": 5, "selected_epoch": None},
             {"fold": 2, "epochs": 4, "selected_epoch": 2}]
    assert refit_epochs({"fold_metrics": folds}, 2) == 2
    assert refit_epochs({"fold_metrics": folds[:1]}, 1) == 5


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_model_file_is_refused_in_one_line(tmp_path: Path, damage: str) -> None:
    from trainers.atft_gat.predict import load_trained

    torch.set_num_threads(1)
    ctx = TrialContext(tmp_path / "t", seed=0, cache_dir=tmp_path / "cache", progress=False)
    refit(TrainConfig(**TINY), ctx, through=None, epochs=1)
    model = tmp_path / "t" / "model.pt"
    assert (tmp_path / "t" / "model.pt.sum").is_file()
    load_trained(tmp_path / "t")  # intact: loads
    data = bytearray(model.read_bytes())
    if damage == "truncate":
        model.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0xFF  # one flipped bit-pattern, same length
        model.write_bytes(bytes(data))
    with pytest.raises(UserError) as err:
        load_trained(tmp_path / "t")
    text = str(err.value)
    assert "is damaged" in text and "\n" not in text
    assert ("bytes, its checksum says" if damage == "truncate" else "BLAKE3") in text
