"""The luck statistics' honesty rules: the PBO over complete trials only, with the spread pure
noise gives at the study's size; "too few trials to judge" below the stated minimum; the DSR
with a bootstrap interval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
import polars as pl
import pytest

from hpo.heldout.luck import (
    MIN_JUDGED_TRIALS,
    TOO_FEW,
    deflation,
    overfitting,
    pbo_null_interval,
    validation_returns,
)
from trainers.metrics.overfitting import probability_of_backtest_overfitting


class _Stub:
    """A held-out capability whose trials' validation returns are given."""

    def __init__(self, series: dict[str, pl.DataFrame]) -> None:
        self.series = series

    def validation(self, trial_dir: Path) -> pl.DataFrame:
        name = Path(trial_dir).name
        if name not in self.series:
            raise OSError(name)
        return self.series[name]

    def returns(self, frame: pl.DataFrame, trained: Any, attrs: Any) -> pl.DataFrame:
        return frame


def test_a_trial_scored_on_fewer_dates_is_left_out_not_the_dates(tmp_path: Path) -> None:
    study = optuna.create_study()
    for _ in range(4):
        study.add_trial(optuna.trial.create_trial(value=0.0))
    dates = np.datetime64("2020-01-01") + np.arange(40)
    rng = np.random.default_rng(0)
    series = {f"trial_{n}": pl.DataFrame({"date": dates, "ret": rng.normal(size=40)})
              for n in (0, 1, 3)}
    series["trial_2"] = pl.DataFrame({"date": dates[:25], "ret": rng.normal(size=25)})
    matrix, cols, left = validation_returns(study, _Stub(series), tmp_path, [0, 1, 2, 3])
    assert cols == [0, 1, 3] and left == [2] and matrix.shape == (40, 3)
    np.testing.assert_array_equal(matrix[:, 2], series["trial_3"]["ret"].to_numpy())
    pbo = overfitting(matrix, cols, blocks=4, left_out=left)
    assert pbo["dates"] == 40 and pbo["left_out"] == [2]
    # the PBO is the one of the complete trials alone: adding the short trial changes nothing
    alone, _, _ = validation_returns(study, _Stub(series), tmp_path, [0, 1, 3])
    assert overfitting(alone, [0, 1, 3], blocks=4)["value"] == pbo["value"]
    assert pbo["verdict"].startswith(TOO_FEW)  # 3 complete trials


def test_enough_trials_are_judged_with_the_noise_interval_of_their_size() -> None:
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(160, MIN_JUDGED_TRIALS))
    pbo = overfitting(matrix, list(range(MIN_JUDGED_TRIALS)), blocks=16)
    assert pbo["verdict"] == "judged"
    assert pbo["value"] == probability_of_backtest_overfitting(matrix, blocks=16)["value"]
    low, high = pbo["null_interval"]
    assert low < 0.5 < high and high - low > 0.3  # noise alone spreads this wide here


def test_the_null_interval_covers_pure_noise_studies_90_percent_of_the_time() -> None:
    low, high = pbo_null_interval(8, 160, 16)
    rng = np.random.default_rng(12345)  # other studies than the interval's own
    values = [probability_of_backtest_overfitting(rng.normal(size=(160, 8)), blocks=16)["value"]
              for _ in range(100)]
    inside = np.mean([(low <= v <= high) for v in values])
    assert 0.8 <= inside <= 0.98


def _moments(n_obs: int) -> dict[str, float]:
    return {"periods_per_year": 252.0, "n_obs": n_obs, "skew": 0.0, "kurtosis": 3.0}


@pytest.mark.parametrize("n_trials", [3, 12])
def test_the_dsr_says_when_it_has_too_few_trials_and_carries_an_interval(n_trials: int) -> None:
    rng = np.random.default_rng(2)
    returns = 0.001 + 0.01 * rng.normal(size=250)
    sharpe = float(returns.mean() / returns.std(ddof=1) * np.sqrt(252))
    sharpes = {i: float(s) for i, s in enumerate(rng.normal(0, 1, n_trials - 1))}
    sharpes[n_trials - 1] = sharpe
    out = deflation(sharpe, _moments(250), sharpes=sharpes, returns=returns)
    if n_trials < MIN_JUDGED_TRIALS:
        assert out["verdict"].startswith(TOO_FEW)
    else:
        assert out["verdict"] == "judged"
    low, high = out["interval"]
    assert 0 <= low < high <= 1 and low <= out["value"] <= high
    assert deflation(sharpe, _moments(125), sharpes=sharpes, returns=returns)["interval"] is None


def test_evaluate_settings_have_one_rule_for_the_file_and_the_flags(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """[evaluate] pbo_blocks, test_model and seeds are checked by EvaluateSpec.problems for the
    study file and for hpo.evaluate's flags alike: every problem at once, one line each."""
    from hpo.config import EvaluateSpec, load_study_spec
    from hpo.evaluate import main as evaluate_main
    from tests.hpo.test_evaluate import STUDY
    from trainers.errors import UserError

    bad = EvaluateSpec(pbo_blocks=3, test_model="median", seeds=0).problems()
    assert [key for key, _ in bad] == ["pbo_blocks", "test_model", "seeds"]
    path = tmp_path / "held.toml"
    path.write_text(STUDY + '\n[evaluate]\npbo_blocks = 3\ntest_model = "median"\nseeds = 0\n')
    with pytest.raises(UserError) as got:
        load_study_spec(str(path))
    assert all(f"[evaluate.{key}]" in str(got.value) for key, _ in bad)
    assert evaluate_main(["--study", "nothing", "--output", str(tmp_path), "--pbo-blocks", "3",
                          "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: --pbo-blocks must be even")
    assert "--seeds must be >= 1" in err
