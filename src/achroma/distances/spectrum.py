"""A phase-invariant distance: fields compared by the magnitude of their 2-D Fourier spectrum.

Deep receptive fields are textures; two fields showing the same texture shifted by a few pixels
differ everywhere in pixel MSE, which phase dominates. The magnitude spectrum |F(field)| (per
channel, `numpy.fft.rfft2`, orthonormal) drops the phase, so circular shifts of a field are at
distance 0 and what is compared is which frequencies and orientations a field holds (issue 22: the
seed's fields given a distance suited to them).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ._common import as_fields, finalize, squared_dists_from_gram


def magnitude_spectra(fields: Any) -> np.ndarray:
    """(N, C, H, W // 2 + 1): |rfft2| of every channel of every field, orthonormal scaling."""
    return np.abs(np.fft.rfft2(as_fields(fields), norm="ortho"))


def spectrum_distances(fields: Any) -> np.ndarray:
    """Mean squared difference between the magnitude spectra of every pair of fields."""
    mag = magnitude_spectra(fields)
    flat = mag.reshape(mag.shape[0], -1)
    flat = flat - flat.mean(axis=0, keepdims=True)  # translation invariant; limits cancellation
    return finalize(squared_dists_from_gram(flat, flat) / flat.shape[1])
