"""Purged walk-forward folds: disjoint, ordered, purged and before the test period, the same
whatever a trial samples."""

from __future__ import annotations

import numpy as np
import pytest

from trainers.atft_gat.config import TrainConfig
from trainers.atft_gat.data import study_split
from trainers.atft_gat.folds import CV, walk_forward_folds
from trainers.config import from_mapping
from trainers.errors import UserError

DATES = np.arange("2020-01-01", "2022-01-01", dtype="datetime64[D]")[:500]


@pytest.mark.parametrize("window", ["expanding", "rolling"])
@pytest.mark.parametrize("folds", [2, 4, 7])
@pytest.mark.parametrize("lookback", [10, 20, 60])
def test_folds_are_disjoint_ordered_purged_and_before_the_test_period(
        window: str, folds: int, lookback: int) -> None:
    config = TrainConfig(cv="walk_forward", cv_folds=folds, cv_window=window, lookback=lookback,
                         horizons=(1, 5), metric_horizon=5, execution_lag=1, purge=8,
                         test_fraction=0.2)
    split = study_split(config, DATES)
    assert len(split.folds) == folds
    blocks = [f.val for f in split.folds]
    joined = np.concatenate(blocks)
    # consecutive blocks, no date twice, together the validation period
    assert np.array_equal(joined, np.arange(joined[0], joined[-1] + 1))
    assert np.array_equal(split.val, joined)
    assert max(len(b) for b in blocks) - min(len(b) for b in blocks) <= 1
    # the last block ends `purge` dates before the test period
    assert split.test[0] - blocks[-1][-1] - 1 == config.purge
    width = len(split.folds[0].train)
    for fold in split.folds:
        # every training label (span = horizon + lag dates) ends before the block
        assert fold.val[0] - fold.train[-1] - 1 == config.purge >= 5 + 1
        assert fold.train[-1] + 5 + 1 < fold.val[0]
        assert np.all(np.diff(fold.train) == 1)
        if window == "expanding":
            assert fold.train[0] == 0
        else:
            assert len(fold.train) == width
    # the same folds for any trial setting that is not a data setting
    other = study_split(TrainConfig(**{**config.__dict__, "lookback": 30, "batch_size": 7}),
                        DATES)
    assert all(np.array_equal(a.val, b.val) and np.array_equal(a.train, b.train)
               for a, b in zip(split.folds, other.folds, strict=True))
    assert split.ranges(DATES)["folds"][0]["validation"][0] == str(DATES[blocks[0][0]])


def test_time_series_split_sizes_and_val_start() -> None:
    folds = walk_forward_folds(val_end=99, folds=4, purge=5)
    # 100 dates in 5 parts of 20: the last 4 are the blocks
    assert [(int(f.val[0]), len(f.val)) for f in folds] == [(20, 20), (40, 20), (60, 20),
                                                           (80, 20)]
    assert [len(f.train) for f in folds] == [15, 35, 55, 75]
    started = walk_forward_folds(val_end=99, folds=3, purge=5, val_start=70)
    assert [(int(f.val[0]), len(f.val)) for f in started] == [(70, 10), (80, 10), (90, 10)]


def test_settings_that_cannot_fold_are_refused_in_one_line() -> None:
    with pytest.raises(UserError, match="too few for 4 walk-forward folds"):
        walk_forward_folds(val_end=5, folds=4, purge=5)
    problems = []
    for bad in ({"cv": "kfold"}, {"cv_window": "sliding"}, {"cv_folds": 1}):
        with pytest.raises(UserError) as err:
            from_mapping(TrainConfig, bad, where="[data]")
        problems.append(str(err.value))
    assert "cv: expected one of 'holdout', 'walk_forward', got 'kfold'" in problems[0]
    assert "cv_window: expected one of 'expanding', 'rolling', got 'sliding'" in problems[1]
    assert TrainConfig(cv="walk_forward").cv is CV.WALK_FORWARD  # parsed once, where made
    assert "cv_folds" in problems[2]


def test_the_holdout_split_has_no_folds_and_reports_one_step_per_epoch() -> None:
    split = study_split(TrainConfig(), DATES)
    assert split.folds == () and "folds" not in split.ranges(DATES)
    assert TrainConfig(epochs=3).reported_steps == 3
    assert TrainConfig(epochs=3, cv="walk_forward", cv_folds=5).reported_steps == 5
