"""The chosen model blended with ridge (``hpo.heldout.blend``): equal weights of per-date
z-scores fixed in advance, scored like every row, compared paired with ridge and the model."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from hpo.heldout import blend_lines
from hpo.heldout.blend import blend_summary, blend_with_baseline
from trainers.heldout import HeldOut, ranking_compare, ranking_score


class Ranking(HeldOut):
    """The cross-sectional figures, nothing else (what the blend asks of a workload)."""

    def load(self, trial_dir):  # noqa: ANN001, ANN201
        return None

    def digest(self, trial_dir):  # noqa: ANN001, ANN201
        return ""

    def predict(self, trial_dir, trained, cache_dir):  # noqa: ANN001, ANN201
        raise AssertionError("not called")

    def score(self, frame, trained):  # noqa: ANN001, ANN201
        return ranking_score(frame)

    def compare(self, rows_a, rows_b, trained):  # noqa: ANN001, ANN201
        return ranking_compare(rows_a, rows_b)


def _rows(signal: np.ndarray, target: np.ndarray, n_stocks: int, n_dates: int,
          first: str) -> pl.DataFrame:
    dates = np.datetime64(first) + np.arange(n_dates)
    return pl.DataFrame({"date": np.repeat(dates, n_stocks),
                         "code": np.tile([f"S{i:03d}" for i in range(n_stocks)], n_dates),
                         "pred": signal.ravel(), "target": target.ravel()})


@pytest.fixture(scope="module")
def periods() -> dict[str, dict[str, pl.DataFrame]]:
    """Two independent signals of one target (model and ridge), on 120 + 120 dates."""
    rng = np.random.default_rng(5)
    n_stocks, n_dates = 60, 120
    out: dict[str, dict[str, pl.DataFrame]] = {"chosen": {}, "linear": {}}
    for period, first in (("validation", "2021-01-01"), ("test", "2021-06-01")):
        a, b = rng.normal(size=(2, n_dates, n_stocks))
        target = 0.1 * (a + b) + rng.normal(size=(n_dates, n_stocks))
        # the model's scores on another scale: the blend must not weigh it more for that
        out["chosen"][period] = _rows(50.0 * a, target, n_stocks, n_dates, first)
        out["linear"][period] = _rows(b, target, n_stocks, n_dates, first)
    return out


def _blend(periods: dict, baseline: dict | None = None) -> dict:
    frames = {p: {"linear": (baseline or periods["linear"])[p]} for p in ("validation", "test")}
    labels = {"test": {"linear": {"label": "ridge (every feature)"}}}
    return blend_with_baseline(Ranking(), None, periods["chosen"], labels, frames)


def test_the_blend_is_the_mean_of_per_date_z_scores_with_equal_weights(periods) -> None:
    blend = _blend(periods)
    assert blend["with"] == "ridge (every feature)"
    assert blend["weights"] == {"chosen": 0.5, "ridge (every feature)": 0.5}
    for period in ("validation", "test"):
        a, b = periods["chosen"][period], periods["linear"][period]

        def z(frame: pl.DataFrame) -> np.ndarray:
            m = frame["pred"].to_numpy().reshape(120, 60)
            return (m - m.mean(1, keepdims=True)) / m.std(1, keepdims=True)

        by_hand = a.with_columns(pred=pl.Series(((z(a) + z(b)) / 2).ravel()))
        expected = ranking_score(by_hand)[0]
        for name in ("sharpe", "sharpe_net", "rank_ic", "turnover"):
            assert blend[period][name]["value"] == pytest.approx(
                expected[name]["value"], rel=1e-12), (period, name)
        # paired against ridge: the difference of the two rows' figures
        ridge = ranking_score(b)[0]
        assert blend["minus_baseline"][period]["rank_ic"]["value"] == pytest.approx(
            expected["rank_ic"]["value"] - ridge["rank_ic"]["value"], rel=1e-9)
    # Two independent halves of the signal: the blend ranks better than either alone.
    assert blend["minus_baseline"]["test"]["rank_ic"]["value"] > 0
    assert blend["minus_chosen"]["test"]["rank_ic"]["value"] > 0


def test_a_blend_with_the_same_signal_changes_nothing(periods) -> None:
    same = _blend(periods, baseline=periods["chosen"])
    alone = ranking_score(periods["chosen"]["test"])[0]
    for name in ("sharpe", "sharpe_net", "rank_ic", "turnover"):
        assert same["test"][name]["value"] == pytest.approx(alone[name]["value"], rel=1e-12)
        assert same["minus_chosen"]["test"][name]["value"] == pytest.approx(0.0, abs=1e-12)


def test_no_blend_without_the_baselines_rows(periods) -> None:
    assert blend_with_baseline(Ranking(), None, periods["chosen"], None, None) is None
    test_only = {"test": {"linear": periods["linear"]["test"]}}
    assert blend_with_baseline(Ranking(), None, periods["chosen"], None, test_only) is None


def test_the_console_says_whether_the_blend_beats_ridge(periods) -> None:
    summary = blend_summary(_blend(periods))
    assert set(summary) == {"with", "test", "minus_baseline", "minus_chosen"}
    lines = blend_lines(summary)
    assert lines[0].startswith("chosen + ridge (every feature), equal weights of per-date "
                               "z-scores, on test: sharpe ")
    assert "minus ridge (every feature) (paired): sharpe " in lines[1]
    assert "rank_ic +" in lines[1] and "(better)" in lines[1]
