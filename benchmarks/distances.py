"""Benchmark: IMED by separable filtering vs the dense-G formula, and the 224x224 cost.

The baseline is the dense formula at its best: G (HW x HW) built with numpy and all pair distances
from one matrix product, d_ij^2 = q_ii + q_jj - 2 q_ij with Q = F G F^T (not a Python loop over
N^2 quadratic forms). Both sides are timed the same way (best of the same number of runs, setup
included). Prints times and ratios measured in the same run; asserts nothing about time.
Run: PYTHONPATH=src python benchmarks/distances.py
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from achroma.distances import pairwise_distances


def dense_imed(fields: np.ndarray, r: float = 1.0) -> np.ndarray:
    """IMED with the dense G (HW x HW) of Wang, Zhang & Feng, vectorized over all pairs."""
    n, h, w = fields.shape
    rows, cols = np.divmod(np.arange(h * w), w)
    p2 = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    g = np.exp(-p2 / (2 * r * r)) / (2 * math.pi * r * r)
    flat = fields.reshape(n, -1)
    q = flat @ g @ flat.T
    d2 = np.diag(q)[:, None] + np.diag(q)[None, :] - 2 * q
    return np.sqrt(np.maximum(d2, 0.0))


def best_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """Fastest of a few runs, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def loop_ssim(fields: np.ndarray) -> np.ndarray:
    """The notebook's method: skimage's SSIM in a Python double loop."""
    from skimage.metrics import structural_similarity

    rng = float(fields.max() - fields.min())
    return np.array([[1 - structural_similarity(a, b, data_range=rng) for b in fields] for a in fields])


def main() -> None:
    rng = np.random.default_rng(0)
    small = rng.random((36, 32, 32))  # the notebook's first layer: 36 fields of 32x32
    repeats = 3
    t_dense = best_time(lambda: dense_imed(small), repeats)  # includes building G with numpy
    t_fast = best_time(lambda: pairwise_distances(small, "imed"), repeats)
    err = np.abs(pairwise_distances(small, "imed") - dense_imed(small)).max() / dense_imed(small).max()
    print(f"IMED 36 x 32x32, best of {repeats}: dense G vectorized (build G + F G F^T) {t_dense * 1e3:.1f} ms, "
          f"separable {t_fast * 1e3:.2f} ms, ratio {t_dense / t_fast:.1f}x, max rel. diff {err:.1e}")

    t_loop = best_time(lambda: loop_ssim(small), repeats)
    t_vec = best_time(lambda: pairwise_distances(small, "ssim"), repeats)
    print(f"SSIM 36 x 32x32: skimage double loop {t_loop:.3f} s, vectorized {t_vec * 1e3:.1f} ms, "
          f"ratio {t_loop / t_vec:.0f}x")

    big = rng.random((8, 224, 224))
    t_big = best_time(lambda: pairwise_distances(big, "imed"))
    print(f"IMED 8 x 224x224 (dense G would be {(224 * 224) ** 2 * 8 / 2**30:.0f} GiB): {t_big:.3f} s")
    t_big_ssim = best_time(lambda: pairwise_distances(big, "ssim"))
    print(f"SSIM 8 x 224x224: {t_big_ssim:.3f} s")


if __name__ == "__main__":
    main()
