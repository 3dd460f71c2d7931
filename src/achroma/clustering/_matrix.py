"""Checks and small transforms on precomputed distance matrices, shared by the estimators."""
from __future__ import annotations

from typing import Any

import numpy as np


def check_distance_matrix(distance_matrix: Any) -> np.ndarray:
    """Return a float64 copy of a valid distance matrix or raise ValueError saying what is wrong.

    Valid: 2-D, square, at least 1 x 1, finite, non-negative, symmetric and zero on the
    diagonal (both up to 1e-8 times the largest entry).
    """
    if hasattr(distance_matrix, "detach") and hasattr(distance_matrix, "cpu"):  # torch tensor
        distance_matrix = distance_matrix.detach().cpu().numpy()
    d = np.array(distance_matrix, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"distance matrix must be square (N x N); got shape {d.shape}")
    if d.shape[0] < 1:
        raise ValueError("distance matrix is empty")
    if np.isnan(d).any():
        raise ValueError("distance matrix contains NaN")
    if not np.isfinite(d).all():
        raise ValueError("distance matrix contains infinite values")
    if (d < 0).any():
        raise ValueError(f"distance matrix has negative entries (min {d.min():.3g})")
    tol = 1e-8 * float(d.max())  # relative to the matrix's own scale
    if np.abs(np.diag(d)).max() > tol:
        raise ValueError("distance matrix must have a zero diagonal")
    if np.abs(d - d.T).max() > tol:
        raise ValueError("distance matrix must be symmetric")
    d = 0.5 * (d + d.T)
    np.fill_diagonal(d, 0.0)
    return d


def minmax_scale(d: np.ndarray) -> np.ndarray:
    """Min-max scale over all entries at once, as the notebook's MinMaxScaler on the flat matrix.

    A constant matrix maps to zeros (sklearn's convention for a zero range).
    """
    lo, hi = float(d.min()), float(d.max())
    if hi == lo:
        return np.zeros_like(d)
    return (d - lo) / (hi - lo)


def apply_scale(d: np.ndarray, scale: str | None) -> np.ndarray:
    """Apply a named scaling ('minmax' or None)."""
    if scale is None:
        return d
    if scale == "minmax":
        return minmax_scale(d)
    raise ValueError(f"scale must be 'minmax' or None; got {scale!r}")


def relabel(labels: Any) -> np.ndarray:
    """Give each outlier (-1) a cluster of its own, then number clusters 0..K-1 by first appearance."""
    labels = np.asarray(labels)
    out = np.empty(len(labels), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, lab in enumerate(labels.tolist()):
        if lab == -1:
            out[i] = len(seen)
            seen[-2 - i] = out[i]  # a unique key per outlier
        else:
            if lab not in seen:
                seen[lab] = len(seen)
            out[i] = seen[lab]
    return out


def medoids(d: np.ndarray, labels: np.ndarray) -> list[int]:
    """Per cluster k (in label order): the member with least total distance to its cluster; ties -> lowest index."""
    reps = []
    for k in range(int(labels.max()) + 1):
        members = np.flatnonzero(labels == k)
        cost = d[np.ix_(members, members)].sum(axis=1)
        reps.append(int(members[int(np.argmin(cost))]))
    return reps


def classical_mds(d: np.ndarray, n_components: int | None = None) -> np.ndarray:
    """Classical (Torgerson) MDS: points whose Euclidean distances best match `d`.

    Double-centres -D^2/2 and keeps the eigenvectors with positive eigenvalues (at most
    `n_components`), scaled by sqrt(eigenvalue). Exact when `d` is Euclidean.
    """
    n = d.shape[0]
    j = np.eye(n) - 1.0 / n
    b = -0.5 * j @ (d * d) @ j
    vals, vecs = np.linalg.eigh(0.5 * (b + b.T))
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    keep = vals > 1e-12 * max(1.0, float(abs(vals).max()))
    if n_components is not None:
        keep &= np.arange(n) < n_components
    if not keep.any():  # all points coincide
        return np.zeros((n, 1))
    return vecs[:, keep] * np.sqrt(vals[keep])
