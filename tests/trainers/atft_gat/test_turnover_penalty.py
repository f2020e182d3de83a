"""The turnover penalty of the ATFT-GAT loss (``turnover_weight``): what it computes, the
paired date order it trains on, and that it lowers the book's turnover at equal settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.trainers.atft_gat.test_train import run
from trainers.atft_gat.batch import Batch
from trainers.atft_gat.loss import turnover_penalty
from trainers.atft_gat.train import epoch_order


def _batch(dates: list[int], stocks: list[list[int]]) -> Batch:
    group = torch.cat([torch.full((len(s),), g) for g, s in enumerate(stocks)])
    stock = torch.cat([torch.as_tensor(s) for s in stocks])
    n = len(stock)
    return Batch(torch.zeros(n, 1, 1), torch.zeros(n, 1), torch.zeros(n, 1), group, stock,
                 np.asarray(dates), torch.zeros((2, 0), dtype=torch.long), torch.zeros(0))


def test_penalty_is_zero_for_a_kept_ranking_and_grows_with_reshuffling() -> None:
    stocks = [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]]  # the same stocks, listed backwards
    same = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
                        requires_grad=True)
    reversed_ = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                             requires_grad=True)
    kept = turnover_penalty(same, _batch([7, 8], stocks), strength=1e-3)
    flipped = turnover_penalty(reversed_, _batch([7, 8], stocks), strength=1e-3)
    assert kept.item() == pytest.approx(0.0, abs=1e-3)
    assert flipped.item() == pytest.approx(2.0, abs=1e-3)  # 1 - (-1)
    # With a soft enough ranking the term has a gradient on both dates' scores.
    soft = turnover_penalty(reversed_, _batch([7, 8], stocks), strength=1.0)
    soft.backward()
    grad = reversed_.grad
    assert grad is not None and grad[:6].abs().sum() > 0 and grad[6:].abs().sum() > 0


def test_only_consecutive_dates_sharing_stocks_count() -> None:
    score = torch.arange(12, dtype=torch.float32)
    apart = _batch([3, 9], [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]])
    assert turnover_penalty(score, apart, strength=1.0) is None
    disjoint = _batch([3, 4], [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]])
    assert turnover_penalty(score, disjoint, strength=1.0) is None


def test_paired_order_visits_each_date_once_beside_its_successor() -> None:
    dates = np.arange(10, 31)
    plain = epoch_order(dates, 0, 0, paired=False)
    assert np.array_equal(plain, np.random.default_rng([0, 0]).permutation(dates))
    for epoch in (0, 1):
        order = epoch_order(dates, 0, epoch, paired=True)
        assert sorted(order) == list(dates)
        starts = {int(a) for a, b in zip(order[:-1], order[1:], strict=True)
                  if b - a == 1 and (a - dates[0]) % 2 == epoch % 2}
        assert len(starts) == (len(dates) - epoch % 2) // 2  # every pair of the epoch
    assert not np.array_equal(epoch_order(dates, 0, 0, paired=True),
                              epoch_order(dates, 1, 0, paired=True))


def test_the_penalty_lowers_turnover_at_equal_settings(tmp_path: Path) -> None:
    settings = dict(epochs=3, max_steps_per_epoch=15, n_dates=200, lr=3e-3,
                    market_difficulty="easy")
    off, _ = run(tmp_path, "off", turnover_weight=0.0, **settings)
    on, ctx = run(tmp_path, "on", turnover_weight=2.0, **settings)
    assert on["turnover"] < 0.8 * off["turnover"]
    assert ctx.history[-1]["train_loss"] == on["train_loss"]
