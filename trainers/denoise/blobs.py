"""Blob diagnostics on the encoder/decoder weight pairs.

Every (hidden unit i, coordinate j) gives one point ``(E[i, j], D[j, i])``: how strongly unit
i reads coordinate j and how strongly it writes it back. Mean-field analyses of this network
predict that these d*H points gather into a few Gaussian "blobs" (e.g. a large blob of
unrelated pairs near the origin and blobs of matched read/write pairs); a collapsed or
unstable run smears them out. We measure that with:

* ``n_clusters``: DBSCAN clusters of the standardised points (noise points excluded);
* ``silhouette``: silhouette score of those clusters (NaN with fewer than two clusters or
  fewer than two clustered points: the score is undefined there);
* ``weight_corr``: Pearson correlation of the encoder and decoder values over all pairs.

DBSCAN is run on a seeded uniform subsample of at most ``max_points`` pairs: the full
reference set is 1M points, and 20k points of a 2-D cloud keep it under a second.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.cluster import DBSCAN
from sklearn.metrics import silhouette_score

# The silhouette score itself is O(n^2); cap its sample (sklearn draws it with our seed).
_SILHOUETTE_SAMPLE = 5000


def weight_pairs(encoder: torch.Tensor, decoder: torch.Tensor) -> np.ndarray:
    """(H, d) encoder and (d, H) decoder -> (H * d, 2) points ``(E[i, j], D[j, i])``."""
    enc = encoder.detach().float().cpu()
    dec = decoder.detach().float().cpu().T  # (H, d): dec[i, j] = D[j, i]
    return torch.stack([enc.reshape(-1), dec.reshape(-1)], dim=1).numpy().astype(np.float64)


def blob_diagnostics(
    encoder: torch.Tensor,
    decoder: torch.Tensor,
    *,
    max_points: int,
    eps: float,
    min_samples: int,
    seed: int,
) -> dict[str, float]:
    points = weight_pairs(encoder, decoder)
    enc, dec = points[:, 0], points[:, 1]
    if enc.std() > 0 and dec.std() > 0:
        weight_corr = float(np.corrcoef(enc, dec)[0, 1])
    else:
        weight_corr = math.nan

    rng = np.random.default_rng(seed)
    if len(points) > max_points:
        points = points[rng.choice(len(points), size=max_points, replace=False)]
    # Standardise each axis so one ``eps`` means the same on encoder and decoder values,
    # whose scales differ by the separate initialisations.
    scale = points.std(axis=0)
    scale[scale == 0] = 1.0
    z = (points - points.mean(axis=0)) / scale
    labels = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(z)
    clustered = labels >= 0
    n_clusters = len(set(labels[clustered].tolist()))
    silhouette = math.nan
    if n_clusters >= 2 and clustered.sum() > n_clusters:
        silhouette = float(
            silhouette_score(
                z[clustered],
                labels[clustered],
                sample_size=min(_SILHOUETTE_SAMPLE, int(clustered.sum())),
                random_state=seed,
            )
        )
    return {
        "n_clusters": float(n_clusters),
        "silhouette": silhouette,
        "weight_corr": weight_corr,
    }
