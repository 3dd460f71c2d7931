"""Tests for achroma.distances: each metric against a reference and the distance-matrix contract."""
from __future__ import annotations

import math
import time
import tracemalloc

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import cdist
from skimage.metrics import structural_similarity
from sklearn.metrics.pairwise import cosine_distances as sk_cosine_distances

from achroma.distances import METRICS, apply_imed_metric, pairwise_distances


def _random_fields(n: int = 6, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size))


def _smooth_fields(n: int = 6, size: int = 32, seed: int = 1) -> np.ndarray:
    """Structured images: blurred noise plus oriented gratings, in [0, 1] like the notebook's fields."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for i in range(n):
        blob = gaussian_filter(rng.standard_normal((size, size)), sigma=3)
        angle = math.pi * i / n
        grating = np.sin(2 * math.pi * 3 * (np.cos(angle) * xx + np.sin(angle) * yy))
        img = 0.5 + 0.2 * grating + 0.5 * blob
        out.append(np.clip(img, 0, 1))
    return np.stack(out)


def _dense_imed(fields: np.ndarray, r: float) -> np.ndarray:
    """The notebook's formula with the dense HW x HW matrix G (test only, small images)."""
    n, h, w = fields.shape
    rows, cols = np.divmod(np.arange(h * w), w)
    p2 = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    g = np.exp(-p2 / (2 * r * r)) / (2 * math.pi * r * r)
    flat = fields.reshape(n, -1)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            diff = flat[i] - flat[j]
            out[i, j] = math.sqrt(max(diff @ g @ diff, 0.0))
    return out


def _skimage_ssim_matrix(fields: np.ndarray, data_range: float) -> np.ndarray:
    n = len(fields)
    return np.array(
        [[1 - structural_similarity(fields[i], fields[j], data_range=data_range) for j in range(n)] for i in range(n)]
    )


@pytest.mark.parametrize("metric", sorted(METRICS))
@pytest.mark.parametrize("shape", [(7, 16, 16), (5, 3, 12, 12)])
def test_distance_matrix_contract(metric: str, shape: tuple[int, ...]) -> None:
    fields = np.random.default_rng(3).random(shape)
    d = pairwise_distances(fields, metric)
    n = shape[0]
    assert isinstance(d, np.ndarray) and d.dtype == np.float64 and d.shape == (n, n)
    assert np.array_equal(d, d.T)
    assert np.all(np.diag(d) == 0)
    assert np.all(d >= 0)
    assert np.all(d[~np.eye(n, dtype=bool)] > 0)  # distinct random fields are at positive distance


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_torch_input_gives_same_numpy_result(metric: str) -> None:
    fields = _random_fields(4, 16)
    from_torch = pairwise_distances(torch.from_numpy(fields).float(), metric)
    from_numpy = pairwise_distances(fields.astype(np.float32), metric)
    assert isinstance(from_torch, np.ndarray)
    np.testing.assert_allclose(from_torch, from_numpy, rtol=1e-12, atol=1e-12)


def test_imed_equals_dense_formula() -> None:
    fields = _random_fields(6, 32)
    for r in (1.0, 2.5):
        np.testing.assert_allclose(pairwise_distances(fields, "imed", r=r), _dense_imed(fields, r), rtol=1e-6)


def test_imed_non_square_images_match_dense_formula() -> None:
    fields = np.random.default_rng(5).random((4, 9, 13))
    np.testing.assert_allclose(pairwise_distances(fields, "imed"), _dense_imed(fields, 1.0), rtol=1e-6)


def test_imed_channels_add_squared_distances() -> None:
    fields = np.random.default_rng(6).random((4, 3, 10, 10))
    per_channel = [pairwise_distances(fields[:, c], "imed") for c in range(3)]
    expected = np.sqrt(sum(p**2 for p in per_channel))
    np.testing.assert_allclose(pairwise_distances(fields, "imed"), expected, rtol=1e-9)


def test_apply_imed_metric_is_g_times_x() -> None:
    img = np.random.default_rng(7).random((6, 5))
    rows, cols = np.divmod(np.arange(30), 5)
    p2 = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    g = np.exp(-p2 / 2.0) / (2 * math.pi)
    np.testing.assert_allclose(apply_imed_metric(img).ravel(), g @ img.ravel(), rtol=1e-12)


def test_imed_near_duplicates_keep_precision() -> None:
    base = _random_fields(1, 32)[0] + 100.0  # large offset: cancellation would show here
    fields = np.stack([base, base + 1e-4 * np.random.default_rng(8).standard_normal(base.shape)])
    np.testing.assert_allclose(pairwise_distances(fields, "imed"), _dense_imed(fields, 1.0), rtol=1e-5)


def test_imed_224_runs_without_dense_matrix() -> None:
    """At 224 x 224 a dense G would be 50,176^2 float64 (20 GB); peak numpy memory stays small."""
    fields = _random_fields(8, 224)
    tracemalloc.start()
    start = time.perf_counter()
    d = pairwise_distances(fields, "imed")
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"IMED 8 x 224x224: {elapsed:.3f} s, peak {peak / 2**20:.1f} MiB")
    assert d.shape == (8, 8) and np.all(np.isfinite(d))
    assert peak < 64 * 2**20


@pytest.mark.parametrize("make", [_random_fields, _smooth_fields])
def test_ssim_equals_skimage(make) -> None:
    fields = make()
    data_range = float(fields.max() - fields.min())
    expected = _skimage_ssim_matrix(fields, data_range)
    np.testing.assert_allclose(pairwise_distances(fields, "ssim"), expected, atol=1e-4)
    np.testing.assert_allclose(pairwise_distances(fields, "ssim", data_range=2.0), _skimage_ssim_matrix(fields, 2.0), atol=1e-4)


def test_ssim_non_default_window_and_channels() -> None:
    fields = np.random.default_rng(9).random((4, 2, 15, 11))
    expected = np.array(
        [[1 - structural_similarity(a, b, data_range=1.0, win_size=5, channel_axis=0) for b in fields] for a in fields]
    )
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(pairwise_distances(fields, "ssim", data_range=1.0, win_size=5), expected, atol=1e-4)


def test_ssim_constant_stack_is_all_zero() -> None:
    assert np.all(pairwise_distances(np.full((3, 8, 8), 0.5), "ssim") == 0)


def test_mse_matches_scipy() -> None:
    fields = _smooth_fields(7)
    flat = fields.reshape(7, -1)
    np.testing.assert_allclose(pairwise_distances(fields, "mse"), cdist(flat, flat, "sqeuclidean") / flat.shape[1], rtol=1e-9, atol=1e-15)


def test_spectrum_is_mse_of_magnitude_spectra_and_phase_invariant() -> None:
    fields = np.random.default_rng(12).standard_normal((5, 2, 8, 8))
    fields[3] = np.roll(fields[1], shift=(3, -2), axis=(-2, -1))  # the same texture, shifted circularly
    d = pairwise_distances(fields, "spectrum")
    # the reference: scipy's squared Euclidean distance between |FFT| (full 2-D FFT, orthonormal; the
    # real FFT keeps half of the symmetric spectrum, so compare on the same half)
    mags = np.abs(np.fft.fft2(fields, norm="ortho"))[..., : 8 // 2 + 1].reshape(5, -1)
    np.testing.assert_allclose(d, cdist(mags, mags, "sqeuclidean") / mags.shape[1], rtol=1e-9, atol=1e-12)
    assert d[1, 3] < 1e-12  # a shift changes only the phase
    assert pairwise_distances(fields, "mse")[1, 3] > 0.5  # which pixel MSE does not ignore
    assert d[0, 1] > 0.01


def test_cosine_matches_sklearn_and_scipy() -> None:
    fields = np.random.default_rng(10).standard_normal((6, 8, 8))
    fields[2] = 0.0  # sklearn's convention for an all-zero vector
    flat = fields.reshape(6, -1)
    expected = sk_cosine_distances(flat)
    np.fill_diagonal(expected, 0.0)
    d = pairwise_distances(fields, "cosine")
    np.testing.assert_allclose(d, expected, atol=1e-12)
    keep = [0, 1, 3, 4, 5]
    np.testing.assert_allclose(d[np.ix_(keep, keep)], cdist(flat[keep], flat[keep], "cosine"), atol=1e-12)


def test_brightness_is_absolute_sum_difference() -> None:
    fields = _random_fields(5, 8)
    sums = fields.reshape(5, -1).sum(axis=1)
    expected = np.abs(sums[:, None] - sums[None, :])
    np.testing.assert_allclose(pairwise_distances(fields, "brightness"), expected, rtol=1e-12)
    scaled = pairwise_distances(fields, "brightness", scale=True)
    np.testing.assert_allclose(scaled, expected / expected.max(), rtol=1e-12)
    assert scaled.max() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "fields, metric, kw",
    [
        (np.zeros((3, 4)), "mse", {}),
        (np.zeros((2, 1, 1, 4, 4)), "mse", {}),
        (np.full((2, 4, 4), np.nan), "cosine", {}),
        (np.zeros((2, 4, 4)), "nope", {}),
        (np.random.default_rng(0).random((2, 5, 5)), "ssim", {}),  # smaller than the 7x7 window
        (np.random.default_rng(0).random((2, 8, 8)), "ssim", {"win_size": 4}),
        (np.random.default_rng(0).random((2, 8, 8)), "ssim", {"data_range": 0.0}),
        (np.random.default_rng(0).random((2, 8, 8)), "imed", {"r": 0.0}),
    ],
)
def test_bad_input_raises_value_error(fields, metric, kw) -> None:
    with pytest.raises(ValueError):
        pairwise_distances(fields, metric, **kw)


def test_ssim_blocking_does_not_change_result(monkeypatch) -> None:
    import achroma.distances.ssim as ssim_module

    fields = np.random.default_rng(11).random((9, 2, 12, 12))
    whole = pairwise_distances(fields, "ssim")
    monkeypatch.setattr(ssim_module, "_BLOCK_ELEMS", 2 * 2 * 12 * 12)  # two pairs per block
    np.testing.assert_array_equal(pairwise_distances(fields, "ssim"), whole)
