"""Blob diagnostics on the encoder/decoder weight pairs.

Every (hidden unit i, coordinate j) gives one point ``(E[i, j], D[j, i])``: how strongly unit
i reads coordinate j and how strongly it writes it back. Mean-field analyses of this network
predict that these d*H points gather into a few Gaussian "blobs" (e.g. a large blob of
unrelated pairs near the origin and blobs of matched read/write pairs); a collapsed or
unstable run smears them out. We measure that with:

* ``n_clusters``: DBSCAN clusters of the standardised points (noise points excluded);
* ``silhouette``: silhouette score of those clusters (NaN with fewer than two clusters: the
  score is undefined there);
* ``weight_corr``: Pearson correlation of the encoder and decoder values over all pairs.

Every pair counts, however rare its blob: matched read/write pairs are about 1 in d of all
pairs, so a uniform subsample would lose them. Exact DBSCAN on the reference's 1M points is
too slow, so the points are binned on a grid of cell width ``eps / 2`` (standardised units)
and DBSCAN runs on the occupied cells' centres with the cell counts as sample weights
(``min_samples`` still counts points). Binning moves a point by at most ``eps / (2 sqrt 2)``,
so clusters separated by more than ``eps`` are found as exact DBSCAN would find them. The
silhouette is computed on up to ``_SILHOUETTE_PER_CLUSTER`` seeded points per cluster, so a
small blob weighs as much as the big one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.cluster import DBSCAN
from sklearn.metrics import silhouette_score

# The silhouette score is O(n^2): score a balanced sample of each cluster.
_SILHOUETTE_PER_CLUSTER = 500


def weight_pairs(encoder: torch.Tensor, decoder: torch.Tensor) -> np.ndarray:
    """(H, d) encoder and (d, H) decoder -> (H * d, 2) points ``(E[i, j], D[j, i])``."""
    enc = encoder.detach().float().cpu()
    dec = decoder.detach().float().cpu().T  # (H, d): dec[i, j] = D[j, i]
    return torch.stack([enc.reshape(-1), dec.reshape(-1)], dim=1).numpy().astype(np.float64)


def blob_diagnostics(
    encoder: torch.Tensor, decoder: torch.Tensor, *, eps: float, min_samples: int, seed: int
) -> dict[str, float]:
    points = weight_pairs(encoder, decoder)
    enc, dec = points[:, 0], points[:, 1]
    if enc.std() > 0 and dec.std() > 0:
        weight_corr = float(np.corrcoef(enc, dec)[0, 1])
    else:
        weight_corr = math.nan

    # Standardise each axis so one ``eps`` means the same on encoder and decoder values,
    # whose scales differ by the separate initialisations.
    scale = points.std(axis=0)
    scale[scale == 0] = 1.0
    z = (points - points.mean(axis=0)) / scale  # (n, 2)
    width = eps / 2
    cells, inverse, counts = np.unique(
        np.floor(z / width).astype(np.int64), axis=0, return_inverse=True, return_counts=True
    )
    centres = (cells + 0.5) * width  # (n_cells, 2)
    cell_labels = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(
        centres, sample_weight=counts
    )
    labels = cell_labels[inverse.reshape(-1)]  # (n,) per point
    clusters = sorted(set(cell_labels[cell_labels >= 0].tolist()))
    silhouette = math.nan
    if len(clusters) >= 2:
        rng = np.random.default_rng(seed)
        picked = np.concatenate([
            rng.choice(members, size=min(len(members), _SILHOUETTE_PER_CLUSTER), replace=False)
            for members in (np.flatnonzero(labels == c) for c in clusters)
        ])
        silhouette = float(silhouette_score(z[picked], labels[picked]))
    return {
        "n_clusters": float(len(clusters)),
        "silhouette": silhouette,
        "weight_corr": weight_corr,
    }
