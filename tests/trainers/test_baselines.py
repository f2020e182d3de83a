"""The baselines a quant tries first: the best single feature and a ridge fit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from trainers.baselines import (
    ALPHAS,
    PanelView,
    choose_best_feature,
    feature_rank_ics,
    fit_ridges,
    panel_baselines,
)

N_DATES, N_STOCKS = 120, 50
NAMES = ("f_noise", "f_signal", "f_late", "f_sparse")


def _view(seed: int = 0) -> PanelView:
    """f_signal ranks the target reversed on every date; f_late carries a stronger signal,
    but only from date 80 on (after the training dates); f_sparse is mostly missing."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N_DATES, N_STOCKS, len(NAMES)))
    noise = rng.standard_normal((N_DATES, N_STOCKS))
    y = -0.4 * x[..., 1] + noise
    y[80:] += 1.5 * x[80:, :, 2]
    x[..., 3][rng.random((N_DATES, N_STOCKS)) < 0.7] = np.nan
    present = rng.random((N_DATES, N_STOCKS)) > 0.1
    y[~present] = np.nan
    dates = np.datetime64("2020-01-01") + np.arange(N_DATES)
    return PanelView(x=x, y=y, present=present, dates=dates,
                     codes=[f"S{i}" for i in range(N_STOCKS)], feature_names=NAMES)


def test_feature_rank_ics_are_scipy_spearman() -> None:
    view = _view()
    ics = feature_rank_ics(view, np.array([3, 40]))
    for row, d in zip(ics, (3, 40), strict=True):
        keep = view.present[d] & np.isfinite(view.y[d])
        for j in (0, 1, 2):
            expected = stats.spearmanr(view.x[d][keep, j], view.y[d][keep]).statistic
            assert row[j] == pytest.approx(expected, abs=1e-12)


def test_ranks_are_scipys_average_ranks_with_ties() -> None:
    from trainers.baselines import _ranks

    rng = np.random.default_rng(2)
    a = rng.integers(0, 4, (300, 5)).astype(float)  # heavy ties, like a sector code
    a[:, 2] = rng.standard_normal(300)
    np.testing.assert_array_equal(_ranks(a), stats.rankdata(a, axis=0) - 301 / 2)


def test_best_feature_is_chosen_on_training_dates_with_its_sign() -> None:
    view = _view()
    best = choose_best_feature(view, np.arange(70))
    assert best["feature"] == "-f_signal" and best["selection_rank_ic"] < -0.2
    # On dates that include the late signal the choice changes: the training dates decide.
    assert choose_best_feature(view, np.arange(80, 120))["feature"] == "+f_late"


def test_ridge_is_scikit_learns_on_standardised_imputed_features() -> None:
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 5)) * [1, 2, 3, 4, 5] + [0, 1, 2, 3, 4]
    x[rng.random(x.shape) < 0.1] = np.nan
    y = np.nan_to_num(x[:, 0]) - np.nan_to_num(x[:, 3]) + rng.standard_normal(400)
    for ridge in fit_ridges(x, y):
        z = (x - np.nanmean(x, 0)) / np.nanstd(x, 0)
        z = np.where(np.isnan(z), 0.0, z)
        ref = Ridge(alpha=ridge.alpha * len(y), fit_intercept=True).fit(z, y)
        np.testing.assert_allclose(ridge.weights, ref.coef_, rtol=1e-8, atol=1e-10)
        shift = ridge.predict(x) - ref.predict(z)
        assert np.ptp(shift) < 1e-8  # equal up to the intercept (ranks ignore it)


def test_panel_baselines_score_every_stock_and_choose_the_penalty_on_validation() -> None:
    view = _view()
    train, val, test = np.arange(60), np.arange(62, 78), np.arange(82, 120)
    got = panel_baselines(view, {"validation": val, "test": test}, train_dates=train)
    assert got["best_feature"]["feature"] == "-f_signal"
    assert got["best_feature"]["chosen_on"] == "training dates"
    by_alpha = got["linear"]["validation_rank_ic_by_alpha"]
    assert set(by_alpha) == {str(a) for a in ALPHAS}
    assert by_alpha[str(got["linear"]["alpha"])] == max(by_alpha.values())
    for period, idx in (("validation", val), ("test", test)):
        scored = sum(int((view.present[d] & np.isfinite(view.y[d])).sum()) for d in idx)
        for name in ("best_feature", "linear"):
            frame = got["frames"][period][name]
            assert len(frame) == scored and frame["pred"].is_finite().all()
    # The ridge reads the signal with its sign: its validation RankIC is positive.
    assert max(by_alpha.values()) > 0.2
