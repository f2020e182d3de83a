"""losses.spearman: soft ranks, the Spearman loss and the combined rank-preserving loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import isotonic_regression
from scipy.stats import pearsonr, rankdata, spearmanr

from losses import (
    _isotonic,
    _permutahedron,
    hard_rank,
    rank_preserving_loss,
    soft_rank,
    spearman_loss,
)
from losses.spearman import DEFAULT_STRENGTH

# Small enough that every gap between distinct values of the test rows exceeds one rank unit
# after scaling, i.e. the hard-rank limit is reached exactly.
HARD = 1e-6


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rows(rows: int, n: int, *, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(rows, n, generator=_gen(seed), dtype=dtype)


def _hard_spearman_mean(pred: torch.Tensor, target: torch.Tensor) -> float:
    p, t = pred.detach().double().numpy(), target.double().numpy()
    return float(np.mean([spearmanr(a, b).statistic for a, b in zip(p, t, strict=True)]))


def _reference_loss(pred, target, strength, mask=None):
    """1 - Pearson(soft_rank(pred), hard ranks), built from the public pieces with torch ops.

    The loss itself runs a fused numpy forward/backward; this is the composition it must equal.
    Every row here is usable (>= 2 entries, target not constant).
    """
    used = torch.isfinite(target) if mask is None else mask & torch.isfinite(target)
    r = soft_rank(pred, strength=strength, mask=used)
    q = hard_rank(target, mask=used)
    mid = (used.sum(dim=1, keepdim=True).to(pred.dtype) + 1) / 2
    rc, qc = torch.where(used, r - mid, 0.0), torch.where(used, q - mid, 0.0)
    corr = (rc * qc).sum(1) / torch.sqrt((rc * rc).sum(1) * (qc * qc).sum(1))
    return (1 - corr).mean()


# --------------------------------------------------------------------------- the PAV kernels


def _ragged(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.array([0, 1, 2, 7, 50, 0, 300])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    # A drifting random walk: plenty of violations and long pools.
    y = np.cumsum(rng.normal(0.05, 1.0, offsets[-1]))
    return y, offsets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_isotonic_fast_paths_match_the_pure_python_reference(seed, monkeypatch):
    y, offsets = _ragged(seed)
    ref_fit, ref_starts = _isotonic.reference_isotonic(y.copy(), offsets)
    fit, starts = _isotonic.scipy_isotonic(y.copy(), offsets)  # scipy's kernel, in place
    np.testing.assert_allclose(fit, ref_fit, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(starts, ref_starts)
    monkeypatch.setattr(_isotonic, "_pava", None)  # the public isotonic_regression route
    fit, starts = _isotonic.scipy_isotonic(y.copy(), offsets)
    np.testing.assert_allclose(fit, ref_fit, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(starts, ref_starts)
    for lo, hi in zip(offsets[:-1], offsets[1:], strict=True):
        if hi > lo:
            np.testing.assert_allclose(fit[lo:hi], isotonic_regression(y[lo:hi]).x, atol=1e-9)


def test_soft_rank_with_the_reference_pav_equals_the_fast_path(monkeypatch):
    x = _rows(5, 200, seed=3)
    x[1, :50] = 0.25  # a long tie
    mask = torch.rand(5, 200, generator=_gen(4)) > 0.2
    fast = soft_rank(x, mask=mask)
    fast_grad = torch.autograd.functional.vjp(
        lambda a: soft_rank(a, mask=mask),
        x,
        torch.randn(5, 200, generator=_gen(5), dtype=torch.float64),
    )[1]
    monkeypatch.setattr(_permutahedron, "isotonic", _isotonic.reference_isotonic)
    slow = soft_rank(x, mask=mask)
    slow_grad = torch.autograd.functional.vjp(
        lambda a: soft_rank(a, mask=mask),
        x,
        torch.randn(5, 200, generator=_gen(5), dtype=torch.float64),
    )[1]
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-9)
    torch.testing.assert_close(fast_grad, slow_grad, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- soft ranks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_soft_ranks_reach_hard_ranks_with_ties_averaged(dtype):
    x = torch.randint(0, 40, (6, 300), generator=_gen(1)).to(dtype)  # many ties
    x[2] = torch.randn(300, generator=_gen(2)).to(dtype)  # and a row without
    got = soft_rank(x, strength=HARD)
    assert got.dtype == dtype
    np.testing.assert_allclose(
        got.double().numpy(), rankdata(x.double().numpy(), axis=1), rtol=0, atol=1e-6
    )


def test_soft_ranks_along_another_dim_and_among_masked_entries_only():
    x = torch.randn(4, 30, 3, generator=_gen(6), dtype=torch.float64)
    got = soft_rank(x, strength=HARD, dim=1)
    np.testing.assert_allclose(got.numpy(), rankdata(x.numpy(), axis=1), atol=1e-9)

    x2 = _rows(3, 40, seed=7)
    mask = torch.rand(3, 40, generator=_gen(8)) > 0.4
    got = soft_rank(x2, strength=HARD, mask=mask)
    for row in range(3):
        used = mask[row].numpy()
        np.testing.assert_allclose(
            got[row].numpy()[used], rankdata(x2[row].numpy()[used]), atol=1e-9
        )
        assert (got[row][~mask[row]] == 0).all()  # masked-out entries: 0


def test_soft_ranks_are_scale_free_and_keep_the_rank_sum():
    x = _rows(3, 500, seed=9)
    r = soft_rank(x)
    torch.testing.assert_close(soft_rank(1e-4 * x + 7.0), r, rtol=0, atol=1e-7)
    torch.testing.assert_close(r.sum(dim=1), torch.full((3,), 500 * 501 / 2, dtype=r.dtype))
    # Smoother than hard ranks but in the same order.
    assert not torch.allclose(r, soft_rank(x, strength=HARD))
    assert (r.argsort(dim=1) == x.argsort(dim=1)).float().mean() > 0.999


def test_unnormalised_strength_is_blondels_epsilon():
    """normalize=False: z = x / strength, which is torchsort's regularization_strength."""
    x = torch.tensor([[3.0, 1.0, 2.0]], dtype=torch.float64)
    # Far apart relative to epsilon -> hard ranks; epsilon huge -> everything pools to the mean.
    torch.testing.assert_close(
        soft_rank(x, strength=0.01, normalize=False),
        torch.tensor([[3.0, 1.0, 2.0]], dtype=torch.float64),
    )
    torch.testing.assert_close(
        soft_rank(x, strength=1e6, normalize=False),
        torch.full((1, 3), 2.0, dtype=torch.float64),
        atol=1e-5,
        rtol=0,
    )
    # The projection of (1.5, 1) onto the permutahedron of (1, 2): (1.75, 1.25).
    torch.testing.assert_close(
        soft_rank(torch.tensor([1.5, 1.0], dtype=torch.float64), strength=1.0, normalize=False),
        torch.tensor([1.75, 1.25], dtype=torch.float64),
    )


def test_soft_rank_agrees_with_torchsort_when_installed():
    torchsort = pytest.importorskip("torchsort")
    x = _rows(4, 100, seed=10)
    for eps in (0.1, 1.0, 10.0):
        torch.testing.assert_close(
            soft_rank(x, strength=eps, normalize=False),
            torchsort.soft_rank(x, regularization_strength=eps),
        )


@pytest.mark.parametrize("normalize", [True, False])
def test_soft_rank_gradcheck(normalize):
    x = _rows(3, 12, seed=11).requires_grad_()
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 3:7] = False
    assert torch.autograd.gradcheck(
        lambda a: soft_rank(a, strength=0.5, normalize=normalize, mask=mask), (x,)
    )


def test_constant_and_non_finite_rows_of_soft_rank():
    x = torch.tensor(
        [[2.0, 2.0, 2.0, 2.0], [1.0, float("nan"), 3.0, 4.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    r = soft_rank(x)
    torch.testing.assert_close(r[0], torch.full((4,), 2.5, dtype=torch.float64))
    assert torch.isnan(r[1]).all()  # a NaN input poisons its own row only
    r[0].sum().backward()
    assert torch.isfinite(x.grad[0]).all()


# --------------------------------------------------------------------------- spearman_loss


def test_loss_reaches_one_minus_scipy_spearman():
    pred = torch.randint(0, 30, (8, 400), generator=_gen(12)).double()  # ties in pred ...
    target = torch.randint(0, 50, (8, 400), generator=_gen(13)).double()  # ... and in target
    target[0] = 0.3 * pred[0] + torch.randn(400, generator=_gen(14), dtype=torch.float64)
    got = spearman_loss(pred, target, strength=HARD)
    assert got.item() == pytest.approx(1 - _hard_spearman_mean(pred, target), abs=1e-9)
    # float32, and a single date given as 1-D
    p32, t32 = _rows(1, 1000, seed=15, dtype=torch.float32)[0], _rows(1, 1000, seed=16)[0]
    got = spearman_loss(p32, t32.float(), strength=HARD)
    assert got.dtype == torch.float32
    expected = 1 - spearmanr(p32.numpy(), t32.numpy()).statistic
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_fused_loss_equals_the_composition_of_public_pieces():
    pred = _rows(4, 60, seed=17).requires_grad_()
    target = _rows(4, 60, seed=18)
    mask = torch.rand(4, 60, generator=_gen(19)) > 0.3
    for m in (None, mask):
        got = spearman_loss(pred, target, mask=m, strength=0.7)
        ref = _reference_loss(pred, target, 0.7, mask=m)
        (g_got,) = torch.autograd.grad(got, pred)
        (g_ref,) = torch.autograd.grad(ref, pred)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(g_got, g_ref, rtol=0, atol=1e-12)


def test_loss_gradcheck_with_ragged_rows_and_nan_targets():
    pred = _rows(4, 15, seed=20).requires_grad_()
    target = _rows(4, 15, seed=21)
    target[0, 2] = float("nan")
    mask = torch.ones(4, 15, dtype=torch.bool)
    mask[1, 5:] = False  # a date with 5 stocks
    mask[3, :] = False  # a date with none
    for strength in (0.3, DEFAULT_STRENGTH, 5.0):
        assert torch.autograd.gradcheck(
            lambda p, s=strength: spearman_loss(p, target, mask=mask, strength=s), (pred,)
        )


def test_gradient_is_non_zero_and_points_toward_the_target_order():
    pred = _rows(16, 2000, seed=22, dtype=torch.float32).requires_grad_()
    target = _rows(16, 2000, seed=23, dtype=torch.float32)
    spearman_loss(pred, target).backward()
    g = pred.grad
    assert torch.isfinite(g).all()
    assert (g != 0).float().mean() > 0.99
    # A small step against the gradient raises the hard Spearman correlation.
    before = _hard_spearman_mean(pred, target)
    after = _hard_spearman_mean(pred - 0.5 * g / g.abs().mean(), target)
    assert after > before + 0.01


def test_gradient_descent_on_predictions_alone_learns_the_order():
    """Plain gradient descent, a few hundred steps: Spearman from ~0 to > 0.9."""
    target = _rows(4, 500, seed=24)
    pred = _rows(4, 500, seed=25).requires_grad_()
    start = _hard_spearman_mean(pred, target)
    assert abs(start) < 0.1
    opt = torch.optim.SGD([pred], lr=300.0)  # the loss is ~1/n per stock; step ~ a few percent
    for _ in range(300):
        opt.zero_grad()
        spearman_loss(pred, target).backward()
        opt.step()
    assert _hard_spearman_mean(pred, target) > 0.9
    assert 1 - spearman_loss(pred, target).item() > 0.9


def test_loss_is_close_to_hard_spearman_at_the_default_strength():
    target = _rows(32, 1000, seed=26)
    pred = 0.3 * target + _rows(32, 1000, seed=27)
    soft = 1 - spearman_loss(pred, target).item()
    assert soft == pytest.approx(_hard_spearman_mean(pred, target), abs=0.01)


def test_large_strength_tends_to_pearson_with_target_ranks():
    target = _rows(3, 300, seed=28)
    pred = 0.5 * target + _rows(3, 300, seed=29)
    expected = np.mean(
        [
            pearsonr(p, rankdata(t)).statistic
            for p, t in zip(pred.numpy(), target.numpy(), strict=True)
        ]
    )
    assert 1 - spearman_loss(pred, target, strength=1e6).item() == pytest.approx(
        expected, abs=1e-9
    )


# --------------------------------------------------------------------------- degenerate rows


def _loss_and_grad(pred, target, **kwargs):
    pred = pred.clone().requires_grad_()
    loss = spearman_loss(pred, target, **kwargs)
    loss.backward()
    return loss, pred.grad


def test_masked_entries_are_ignored_and_get_no_gradient():
    pred, target = _rows(3, 50, seed=30), _rows(3, 50, seed=31)
    mask = torch.ones(3, 50, dtype=torch.bool)
    mask[0, 40:] = False
    mask[2, :] = False  # a fully masked date: left out of the mean
    poisoned = pred.clone()
    poisoned[0, 40:] = float("nan")  # padding may hold anything
    poisoned[2] = float("inf")
    loss, grad = _loss_and_grad(poisoned, target, mask=mask)
    expected = (
        spearman_loss(pred[0, :40], target[0, :40]) + spearman_loss(pred[1], target[1])
    ) / 2
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)
    assert torch.isfinite(grad).all()
    assert (grad[~mask] == 0).all()


def test_nan_targets_are_dropped_like_masked_entries():
    pred, target = _rows(2, 30, seed=32), _rows(2, 30, seed=33)
    with_nan = target.clone()
    with_nan[0, ::3] = float("nan")
    with_nan[1, 5] = float("inf")
    mask = torch.isfinite(with_nan)
    loss_nan, grad_nan = _loss_and_grad(pred, with_nan)
    loss_mask, grad_mask = _loss_and_grad(pred, torch.where(mask, target, 0.0), mask=mask)
    assert loss_nan.item() == pytest.approx(loss_mask.item(), abs=1e-12)
    torch.testing.assert_close(grad_nan, grad_mask)
    assert (grad_nan[~mask] == 0).all()


def test_constant_prediction_row_counts_as_zero_correlation_with_zero_gradient():
    pred, target = _rows(2, 20, seed=34), _rows(2, 20, seed=35)
    pred[1] = 0.1  # e.g. a freshly initialised head
    loss, grad = _loss_and_grad(pred, target)
    expected = (spearman_loss(pred[0], target[0]).item() + 1.0) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert torch.isfinite(grad).all()
    assert (grad[1] == 0).all() and (grad[0] != 0).any()


def test_constant_target_row_is_left_out():
    pred, target = _rows(2, 20, seed=36), _rows(2, 20, seed=37)
    target[1] = 3.0
    loss, grad = _loss_and_grad(pred, target)
    assert loss.item() == pytest.approx(spearman_loss(pred[0], target[0]).item(), abs=1e-12)
    assert (grad[1] == 0).all()


def test_single_valid_stock_rows_are_left_out_and_all_left_out_gives_zero():
    pred, target = _rows(3, 10, seed=38), _rows(3, 10, seed=39)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[:, 4] = True  # one stock per date
    loss, grad = _loss_and_grad(pred, target, mask=mask)
    assert loss.item() == 0.0
    assert (grad == 0).all()
    mask[0] = True  # now date 0 counts
    loss, _ = _loss_and_grad(pred, target, mask=mask)
    assert loss.item() == pytest.approx(spearman_loss(pred[0], target[0]).item(), abs=1e-12)
    # min_valid raises the bar: date 0 (10 stocks) no longer counts at 11.
    assert spearman_loss(pred, target, mask=mask, min_valid=11).item() == 0.0


def test_two_valid_stocks_is_plus_or_minus_one():
    pred = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=torch.float64)
    target = torch.tensor([[5.0, 6.0], [6.0, 5.0]], dtype=torch.float64)
    loss, grad = _loss_and_grad(pred, target, strength=HARD)
    assert loss.item() == pytest.approx(1.0)  # (0 + 2) / 2
    assert torch.isfinite(grad).all()


def test_non_finite_prediction_at_a_used_entry_surfaces_as_nan():
    pred, target = _rows(2, 10, seed=40), _rows(2, 10, seed=41)
    target[1] = 1.0  # even in a date that is not counted
    pred[1, 3] = float("nan")
    assert torch.isnan(spearman_loss(pred, target))


def test_empty_inputs():
    assert spearman_loss(torch.zeros(0, 5), torch.zeros(0, 5)).item() == 0.0
    assert spearman_loss(torch.zeros(3, 0), torch.zeros(3, 0)).item() == 0.0
    assert soft_rank(torch.zeros(0, 5)).shape == (0, 5)


# --------------------------------------------------------------------------- dtypes and devices


def test_float32_matches_float64():
    pred, target = _rows(8, 1000, seed=42), _rows(8, 1000, seed=43)
    l64, g64 = _loss_and_grad(pred, target)
    l32, g32 = _loss_and_grad(pred.float(), target.float())
    assert l32.dtype == torch.float32 and g32.dtype == torch.float32
    assert l32.item() == pytest.approx(l64.item(), abs=1e-6)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-9)


def test_half_precision_is_computed_in_float32_and_returned_in_kind():
    pred, target = _rows(2, 100, seed=44), _rows(2, 100, seed=45)
    got = spearman_loss(pred.bfloat16(), target.bfloat16())
    assert got.dtype == torch.bfloat16
    assert got.item() == pytest.approx(spearman_loss(pred, target).item(), abs=0.02)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_results_stay_on_the_device_and_match_cpu():
    pred, target = _rows(4, 300, seed=46), _rows(4, 300, seed=47)
    mask = torch.rand(4, 300, generator=_gen(48)) > 0.1
    l_cpu, g_cpu = _loss_and_grad(pred, target, mask=mask)
    l_gpu, g_gpu = _loss_and_grad(pred.cuda(), target.cuda(), mask=mask.cuda())
    assert l_gpu.device.type == "cuda" and g_gpu.device.type == "cuda"
    assert l_gpu.item() == pytest.approx(l_cpu.item(), abs=1e-10)
    torch.testing.assert_close(g_gpu.cpu(), g_cpu)
    assert soft_rank(pred.cuda()).device.type == "cuda"


# --------------------------------------------------------------------------- rank_preserving_loss


def test_combined_loss_is_the_weighted_sum_of_its_parts():
    pred = _rows(3, 80, seed=49).requires_grad_()
    target = _rows(3, 80, seed=50)
    total, parts = rank_preserving_loss(pred, target, rank_weight=0.3, ic_weight=0.2)
    assert set(parts) == {"base", "rank", "ic"}
    assert all(not v.requires_grad for v in parts.values())
    expected = parts["base"] + 0.3 * parts["rank"] + 0.2 * parts["ic"]
    assert total.item() == pytest.approx(expected.item(), abs=1e-12)
    assert parts["rank"].item() == pytest.approx(spearman_loss(pred, target).item(), abs=1e-12)
    ic = np.mean(
        [
            pearsonr(p, t).statistic
            for p, t in zip(pred.detach().numpy(), target.numpy(), strict=True)
        ]
    )
    assert parts["ic"].item() == pytest.approx(1 - ic, abs=1e-12)
    huber = torch.nn.functional.huber_loss(pred, target, delta=1.0)
    assert parts["base"].item() == pytest.approx(huber.item(), abs=1e-12)


def test_base_loss_is_per_date_over_used_entries():
    pred, target = _rows(2, 10, seed=51), _rows(2, 10, seed=52)
    target[0, :6] = float("nan")  # date 0 keeps 4 stocks, date 1 all 10
    _, parts = rank_preserving_loss(pred, target, base="mse")
    per_date = [((pred[0, 6:] - target[0, 6:]) ** 2).mean(), ((pred[1] - target[1]) ** 2).mean()]
    assert parts["base"].item() == pytest.approx(float(sum(per_date) / 2), abs=1e-12)


def test_every_weight_changes_the_gradient():
    pred, target = _rows(2, 50, seed=53), _rows(2, 50, seed=54)

    def grad(**kwargs):
        p = pred.clone().requires_grad_()
        rank_preserving_loss(p, target, **kwargs)[0].backward()
        return p.grad

    base = grad(rank_weight=0.0)
    assert not torch.allclose(grad(rank_weight=0.5), base)
    assert not torch.allclose(grad(rank_weight=0.0, ic_weight=0.5), base)
    assert not torch.allclose(grad(rank_weight=0.0, base="mse"), base)
    assert not torch.allclose(grad(rank_weight=0.0, huber_delta=0.1), base)
    assert not torch.allclose(grad(rank_weight=0.5, strength=0.2), grad(rank_weight=0.5))


def test_combined_loss_gradcheck_and_one_date():
    pred = _rows(2, 12, seed=55).requires_grad_()
    target = _rows(2, 12, seed=56)
    target[1, 0] = float("nan")
    for base in ("huber", "mse"):
        assert torch.autograd.gradcheck(
            lambda p, b=base: rank_preserving_loss(
                p, target, rank_weight=0.7, ic_weight=0.3, base=b, huber_delta=0.5
            )[0],
            (pred,),
        )
    total_1d, _ = rank_preserving_loss(pred[0], target[0])
    total_2d, _ = rank_preserving_loss(pred[:1], target[:1])
    assert total_1d.item() == pytest.approx(total_2d.item())


def test_combined_loss_degenerate_dates_give_finite_gradients():
    pred = _rows(3, 8, seed=57)
    target = _rows(3, 8, seed=58)
    pred[0] = 1.0  # constant prediction
    target[1] = float("nan")  # nothing valid
    target[2, 1:] = float("nan")  # one valid stock
    p = pred.clone().requires_grad_()
    total, parts = rank_preserving_loss(p, target, rank_weight=1.0, ic_weight=1.0)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(p.grad).all()
    assert parts["rank"].item() == 1.0 and parts["ic"].item() == 1.0  # only date 0 counts
    assert (p.grad[1] == 0).all()


# --------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strength": 0.0}, "strength must be a positive finite number, got 0.0"),
        ({"strength": float("nan")}, "strength must be a positive finite number"),
        ({"rank_weight": -1.0}, "rank_weight must be a finite number >= 0, got -1.0"),
        ({"ic_weight": float("inf")}, "ic_weight must be a finite number >= 0"),
        ({"base": "l1"}, "base must be 'huber' or 'mse', got 'l1'"),
        ({"huber_delta": 0.0}, "huber_delta must be > 0"),
        ({"min_valid": 1}, "min_valid must be an integer >= 2, got 1"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    pred, target = _rows(2, 5), _rows(2, 5, seed=1)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        rank_preserving_loss(pred, target, **kwargs)


def test_bad_shapes_and_masks_are_named():
    pred = _rows(2, 5)
    with pytest.raises(ValueError, match=r"target must have the shape of pred \(2, 5\)"):
        spearman_loss(pred, _rows(2, 4))
    with pytest.raises(ValueError, match=r"pred must be \(dates, stocks\) or \(stocks,\)"):
        spearman_loss(pred[None], pred[None])
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        spearman_loss(pred, pred, mask=torch.ones(2, 5))
    with pytest.raises(TypeError, match="pred must be a floating-point tensor"):
        spearman_loss(torch.ones(2, 5, dtype=torch.long), pred)
    with pytest.raises(ValueError, match="at least one dimension"):
        soft_rank(torch.tensor(1.0))


# --------------------------------------------------------------------------- the benchmark script


def test_bench_script_runs_on_a_tiny_shape_and_writes_the_documented_json(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "bench_spearman.py"
    spec = importlib.util.spec_from_file_location("bench_spearman", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "spearman.json"
    argv = ["--shapes", "3x40,2x30", "--repeats", "2", "--pairwise-repeats", "1"]
    assert bench.main([*argv, "--pairwise-rows", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    for key in ("shape", "ours_ms", "pairwise_ms", "torchsort_ms", "ours_peak_mb"):
        assert key in report
    assert report["shape"] == [3, 40] and len(report["shapes"]) == 2
    assert report["ours_ms"] > 0 and report["pairwise_ms"] > 0
    assert report["ours_peak_mb"] is not None and report["pairwise_peak_mb"] is not None
    # The three soft ranks agree on what they compute: same loss at a tiny strength.
    pred, target = bench._inputs(2, 30)
    q = hard_rank(target)
    pairwise = bench._pearson_loss(bench._pairwise_soft_rank(bench._scaled(pred), 1e-4), q)
    assert pairwise.item() == pytest.approx(spearman_loss(pred, target, strength=1e-4).item())
