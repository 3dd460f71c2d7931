"""Pairwise distances between receptive fields (pipeline step 3).

Input: a stack of N fields, (N, H, W) gray or (N, C, H, W), numpy or torch.
Output: an N x N float64 numpy matrix, symmetric, zero diagonal, non-negative.

    >>> from achroma.distances import pairwise_distances
    >>> d = pairwise_distances(fields, "imed", r=1.0)
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .elementwise import brightness_distances, cosine_distances, mse_distances
from .imed import apply_imed_metric, gaussian_kernel_matrix, imed_distances
from .spectrum import spectrum_distances
from .ssim import ssim_distances

METRICS: dict[str, Callable[..., np.ndarray]] = {
    "mse": mse_distances,
    "ssim": ssim_distances,
    "cosine": cosine_distances,
    "brightness": brightness_distances,
    "imed": imed_distances,
    "spectrum": spectrum_distances,
}


def pairwise_distances(fields: Any, metric: str = "mse", **kw: Any) -> np.ndarray:
    """N x N distance matrix of `fields` under `metric` (a key of METRICS); `kw` go to that metric."""
    try:
        fn = METRICS[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}") from None
    return fn(fields, **kw)


__all__ = [
    "METRICS",
    "pairwise_distances",
    "mse_distances",
    "ssim_distances",
    "cosine_distances",
    "brightness_distances",
    "imed_distances",
    "spectrum_distances",
    "apply_imed_metric",
    "gaussian_kernel_matrix",
]
