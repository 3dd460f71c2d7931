"""Euclidean distances between raw filter weights, so that k-means by count is k-means on the weights.

Son et al. (ECCV 2018, "Clustering convolutional kernels to compress deep neural networks") cluster
2-D kernels and share a centroid per cluster. Here whole filters are clustered (each output channel's
weights flattened, (in/groups) * k * k values), because the merge acts on whole output channels.
`KMeansClustering` embeds a distance matrix by classical MDS, which is exact for a Euclidean matrix:
on this matrix it is plain k-means on the flattened filters (up to k-means' own initialisation).
Bias, BN and the folded conv's border correction are not part of the weights.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.distance import pdist, squareform
from torch import nn

from ._common import Paths, writer_convs
from .base import DistanceSelection, SelectionInput, register_selection


def filter_weights(model: nn.Module, path: Paths) -> np.ndarray:
    """(N, D) float64: row c is filter c's flattened weights (all writers' filters c, concatenated)."""
    parts = [conv.weight.detach()[rows].to("cpu", torch.float64).flatten(1).numpy()
             for _p, conv, rows in writer_convs(model, path)]
    return np.concatenate(parts, axis=1)


def weight_distances(model: nn.Module, path: Paths) -> np.ndarray:
    """N x N Euclidean distances between `path`'s flattened filters (writers concatenated, when a list)."""
    return euclidean_matrix(filter_weights(model, path))


def euclidean_matrix(points: np.ndarray) -> np.ndarray:
    """N x N Euclidean distances between rows: scipy's pdist up to 64 rows, a BLAS product above
    (a 2,048-filter group of Wide ResNet-50 took 0.3 s per pdist here)."""
    if len(points) <= 64:
        return squareform(pdist(points, "euclidean"))
    x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float64))
    d = torch.cdist(x, x, compute_mode="use_mm_for_euclid_dist").numpy()
    np.fill_diagonal(d, 0.0)
    return 0.5 * (d + d.T)


@register_selection
class WeightSelection(DistanceSelection):
    name = "weights"
    help = "k-means on the raw filter weights (the whole-network default: it won the sweeps)"

    def distances(self, inp: SelectionInput) -> tuple[np.ndarray, dict]:
        features = filter_weights(inp.model, inp.group.rows)
        return euclidean_matrix(features), {"features": features}
