"""Input checks and output clean-up shared by every distance metric."""
from __future__ import annotations

from typing import Any

import numpy as np


def as_fields(fields: Any) -> np.ndarray:
    """Return a float64 array of shape (N, C, H, W) from an (N, H, W) or (N, C, H, W) stack.

    Accepts numpy arrays, torch tensors (any device, detached here) and nested sequences.
    A 3-D input is treated as N gray images and gets a channel axis of size 1.
    """
    if hasattr(fields, "detach") and hasattr(fields, "cpu"):  # a torch tensor, without importing torch
        fields = fields.detach().cpu().numpy()
    arr = np.asarray(fields, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise ValueError(f"fields must have shape (N, H, W) or (N, C, H, W); got shape {arr.shape}")
    if arr.shape[0] < 1 or min(arr.shape[1:]) < 1:
        raise ValueError(f"fields must be a non-empty stack; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("fields contain NaN or infinite values")
    return arr


def finalize(dist: np.ndarray) -> np.ndarray:
    """Make a computed matrix an exact distance matrix: symmetric, zero diagonal, non-negative.

    The metrics are symmetric in exact arithmetic; this removes rounding asymmetry and the
    tiny negatives that the Gram identity ||a-b||^2 = |a|^2 + |b|^2 - 2<a,b> can leave.
    """
    dist = np.asarray(dist, dtype=np.float64)
    dist = 0.5 * (dist + dist.T)
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    return dist


def squared_dists_from_gram(x: np.ndarray, gx: np.ndarray) -> np.ndarray:
    """Pairwise (x_i - x_j)^T G (x_i - x_j) for rows of `x`, given `gx` = rows of G x (G symmetric PSD).

    Uses q_i + q_j - 2 <x_i, G x_j> with one matrix product. Callers centre the data first
    (distances are translation invariant) so that q stays small and cancellation is mild.
    """
    gram = x @ gx.T
    gram = 0.5 * (gram + gram.T)
    q = np.diag(gram)
    return q[:, None] + q[None, :] - 2.0 * gram
