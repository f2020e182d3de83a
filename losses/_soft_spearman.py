"""Fused per-row soft Spearman correlation, forward and backward, in numpy (float64).

Mathematically this is ``pearson(soft_rank(x), target_ranks)`` per row, with ``soft_rank``'s
standardisation (see ``losses/spearman.py``). Doing it as one autograd node over sorted, packed
rows instead of ~30 torch ops saves most of the memory traffic: after the one sort of ``x``,
every step is a pass over the packed array, and only the final gradient is scattered back to
input order. Gradients are the exact VJP of each stage:

    x --(sort, pack)--> s --(standardise)--> z --(permutahedron)--> r --(pearson with q)--> corr

- pearson:      d corr / d r  = q_c / sqrt(V_r V_q) - corr * r_c / V_r
- permutahedron: subtract the PAV block mean (``_permutahedron.centre_blocks``)
- standardise:  z = xh * sigma_k / strength with xh = (s - mean) / std; for
                scale = sigma_k / (strength * std):
                g_x = scale * (g_z - mean(g_z) - xh * mean(g_z * xh))
- sort/pack:    scatter back to input order (invalid entries get 0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from losses import _permutahedron


@dataclass(frozen=True)
class SpearmanState:
    packing: _permutahedron.Packing
    starts: np.ndarray  # PAV block starts
    r_c: np.ndarray  # centred soft ranks (packed)
    q_c: np.ndarray  # centred target ranks (packed)
    xh: np.ndarray  # standardised predictions (packed)
    scale: np.ndarray  # (rows,) sigma_k / (strength * std): z = xh * std * scale
    inv: np.ndarray  # (rows,) 1 / sqrt(V_r V_q), 0 where the correlation is not defined
    corr_over_vr: np.ndarray  # (rows,) corr / V_r, 0 where not defined
    bad: np.ndarray | None  # rows with a non-finite valid prediction


def forward(
    x: np.ndarray,
    valid: np.ndarray | None,
    q: np.ndarray,
    usable: np.ndarray,
    strength: float,
) -> tuple[np.ndarray, SpearmanState]:
    """Per-row soft Spearman of ``x`` (rows, n) with target ranks ``q`` (rows, n, input order).

    ``usable`` (rows,) marks the rows whose correlation is wanted; the others, and constant
    prediction rows, get 0 and no gradient. Rows with a non-finite valid ``x`` get NaN.
    """
    bad = _permutahedron.bad_rows(x, valid)
    if bad is not None:
        x = np.where(bad[:, None], 0.0, x)
    pk = _permutahedron.pack(x, valid)  # sorting x sorts z: standardising is increasing
    k = pk.counts.astype(np.float64)
    k1 = np.maximum(k, 1.0)

    # In place from here on: every (rows, n) temporary costs page faults on a fresh allocation.
    xh = pk.flatten(x)
    # Centre on the row's minimum first: a constant row then centres to exactly 0, which makes
    # "constant" an exact test (variance == 0) rather than a tolerance on rounding noise.
    xh -= pk.expand(pk.row_first(xh))
    xh -= pk.expand(pk.row_sum(xh) / k1)
    var = pk.row_dot(xh, xh) / k1
    const = var == 0
    inv_std = np.where(const, 0.0, 1.0 / np.sqrt(np.where(const, 1.0, var)))
    xh *= pk.expand(inv_std)  # standardised; 0 for a constant row
    sigma_k = np.sqrt(np.maximum(k * k - 1.0, 0.0) / 12.0)  # std of the ranks 1..k
    r_c, starts = _permutahedron.project_packed(xh * pk.expand(sigma_k / strength), pk)
    scale = sigma_k * inv_std / strength  # d z / d x = scale * (I - 1/k - xh xh^T / k)

    # Soft and hard ranks of a row with k entries both sum to k(k+1)/2: mean (k+1)/2, exactly.
    mid = pk.expand((k + 1.0) / 2.0)
    r_c -= mid
    q_c = pk.flatten(q)
    q_c -= mid
    cov, v_r, v_q = pk.row_dot(r_c, q_c), pk.row_dot(r_c, r_c), pk.row_dot(q_c, q_c)
    ok = usable & ~const & (v_r > 0) & (v_q > 0)
    if bad is not None:
        ok &= ~bad
    inv = np.where(ok, 1.0 / np.sqrt(np.where(ok, v_r * v_q, 1.0)), 0.0)
    corr = cov * inv
    corr_over_vr = np.where(ok, corr / np.where(ok, v_r, 1.0), 0.0)
    if bad is not None:
        corr[bad] = np.nan
    state = SpearmanState(pk, starts, r_c, q_c, xh, scale, inv, corr_over_vr, bad)
    return corr, state


def backward(grad_corr: np.ndarray, st: SpearmanState) -> np.ndarray:
    """VJP: d loss / d x (rows, n, input order) from d loss / d corr (rows,)."""
    pk = st.packing
    # Two packed buffers for the whole pass (the state stays intact: backward may run twice).
    g = np.multiply(st.q_c, pk.expand(grad_corr * st.inv))
    scratch = np.multiply(st.r_c, pk.expand(grad_corr * st.corr_over_vr))
    g -= scratch
    _permutahedron.centre_blocks(g, st.starts, scratch)
    k1 = np.maximum(pk.counts.astype(np.float64), 1.0)
    mean_g = pk.row_sum(g) / k1  # ~0 already: each PAV block sums to 0 after centring
    mean_gx = pk.row_dot(g, st.xh) / k1
    g -= pk.expand(mean_g)
    g -= np.multiply(st.xh, pk.expand(mean_gx), out=scratch)
    g *= pk.expand(st.scale)
    out = pk.unflatten(g)
    if st.bad is not None:
        out[st.bad] = np.nan
    return out
