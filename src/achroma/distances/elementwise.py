"""Metrics on flattened fields: MSE, cosine and brightness (all channels flattened together)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ._common import as_fields, finalize, squared_dists_from_gram


def mse_distances(fields: Any) -> np.ndarray:
    """Mean squared error between every pair of flattened fields (the notebook's first-layer metric)."""
    x = as_fields(fields)
    flat = x.reshape(x.shape[0], -1)
    flat = flat - flat.mean(axis=0, keepdims=True)  # translation invariant; limits cancellation
    return finalize(squared_dists_from_gram(flat, flat) / flat.shape[1])


def cosine_distances(fields: Any) -> np.ndarray:
    """1 - cosine similarity of flattened fields, in [0, 2].

    As in scikit-learn's `cosine_distances`, an all-zero field has similarity 0 to every other
    field (distance 1) and distance 0 to itself.
    """
    x = as_fields(fields)
    flat = x.reshape(x.shape[0], -1)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    unit = np.divide(flat, norms, out=np.zeros_like(flat), where=norms > 0)
    dist = 1.0 - unit @ unit.T
    np.clip(dist, 0.0, 2.0, out=dist)
    return finalize(dist)


def brightness_distances(fields: Any, scale: bool = False) -> np.ndarray:
    """|sum_i - sum_j|: difference in total brightness of two fields.

    The notebook used the signed difference sum_i - sum_j, which is not symmetric (hence not a
    distance) and then min-max scaled it; here the absolute value is taken. With `scale=True`
    the matrix is divided by its maximum, which equals min-max scaling because the minimum is 0.
    """
    x = as_fields(fields)
    sums = x.reshape(x.shape[0], -1).sum(axis=1)
    dist = np.abs(sums[:, None] - sums[None, :])
    if scale:
        top = dist.max()
        if top > 0:
            dist = dist / top
    return finalize(dist)
