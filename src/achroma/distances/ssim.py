"""1 - SSIM for all pairs at once, equal to scikit-image's `structural_similarity` defaults.

Settings (skimage's with gaussian_weights=False): a win_size x win_size uniform window (7),
K1=0.01, K2=0.03, sample covariance (NP / (NP - 1)), and the mean SSIM taken over the map with
a (win_size - 1) // 2 border cropped. Because of that crop every kept window lies inside the
image, so only "valid" box means are computed and skimage's reflect padding never matters.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._common import as_fields, finalize

# Elements per temporary array in one block of pairs (float64: 32 MiB).
_BLOCK_ELEMS = 1 << 22


def _box_mean(a: np.ndarray, win: int) -> np.ndarray:
    """Mean over every valid win x win window of the last two axes (running sums, separable)."""
    for axis in (-2, -1):
        c = np.cumsum(a, axis=axis)
        zero = np.zeros_like(np.take(c, [0], axis=axis))
        c = np.concatenate([zero, c], axis=axis)
        n = c.shape[axis]
        a = (np.take(c, np.arange(win, n), axis=axis) - np.take(c, np.arange(0, n - win), axis=axis)) / win
    return a


def ssim_distances(
    fields: Any,
    data_range: float | None = None,
    win_size: int = 7,
    k1: float = 0.01,
    k2: float = 0.03,
) -> np.ndarray:
    """1 - mean SSIM between every pair of fields.

    data_range: the dynamic range R in C1 = (K1 R)^2, C2 = (K2 R)^2. None (default) takes the
    joint range of the whole stack (max - min over all fields), so the matrix does not change
    when the stack is shifted or rescaled. The notebook ran an old scikit-image on float images
    in [0, 1], which silently used R = 2 (the float dtype range [-1, 1]); pass data_range=2.0
    to reproduce its numbers exactly.
    For (N, C, H, W) input the SSIM is computed per channel and averaged, like skimage's
    `structural_similarity(..., channel_axis=0)`.
    """
    x = as_fields(fields)
    n, c, h, w = x.shape
    if win_size < 1 or win_size % 2 != 1:
        raise ValueError(f"win_size must be a positive odd integer; got {win_size}")
    if win_size > min(h, w):
        raise ValueError(f"win_size {win_size} exceeds the field size {h}x{w}")
    if not (k1 > 0 and k2 > 0):
        raise ValueError("k1 and k2 must be positive (they keep SSIM defined on flat windows)")
    if data_range is None:
        data_range = float(x.max() - x.min())
        if data_range == 0.0:  # every pixel of every field is equal: all fields are identical
            return np.zeros((n, n))
    elif not (data_range > 0 and math.isfinite(data_range)):
        raise ValueError(f"data_range must be a positive finite number; got {data_range}")

    np_win = win_size * win_size
    cov_norm = np_win / (np_win - 1) if np_win > 1 else 1.0
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2

    mu = _box_mean(x, win_size)  # (N, C, h', w') local means, per field
    var = cov_norm * (_box_mean(x * x, win_size) - mu * mu)  # local sample variances

    sim = np.empty((n, n))
    pairs = max(1, _BLOCK_ELEMS // (c * h * w))  # pairs per block, to bound memory
    cols_per = min(n, pairs)
    rows_per = max(1, pairs // cols_per)
    for r0 in range(0, n, rows_per):
        rows = slice(r0, min(n, r0 + rows_per))
        for c0 in range(0, n, cols_per):
            cols = slice(c0, min(n, c0 + cols_per))
            xy = _box_mean(x[rows, None] * x[None, cols], win_size)  # (bi, bj, C, h', w') local E[xy]
            mu_i, mu_j = mu[rows, None], mu[None, cols]
            cov = cov_norm * (xy - mu_i * mu_j)
            num = (2.0 * mu_i * mu_j + c1) * (2.0 * cov + c2)
            den = (mu_i * mu_i + mu_j * mu_j + c1) * (var[rows, None] + var[None, cols] + c2)
            sim[rows, cols] = (num / den).mean(axis=(2, 3, 4))
    return finalize(1.0 - sim)
