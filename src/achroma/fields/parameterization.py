"""What the ascent moves: the pixels themselves, or a 1/f-scaled spectrum (Lucid's fft_image); and jitter.

Both spaces give images in the same 0..255 pixel scale and start from the same start image.
Jitter rolls each image by a random whole-pixel offset before every forward pass, Lucid's
cheapest transformation robustness; the offsets come from per-filter seeded streams, so a
filter's field does not depend on which other filters share its batch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

PARAMETERIZATIONS = ("pixel", "fourier")


class PixelImage:
    """The image is its own parameter (the notebook's ascent)."""

    def init(self, x0: torch.Tensor) -> torch.Tensor:
        return x0.clone()

    def image(self, p: torch.Tensor) -> torch.Tensor:
        return p


class FourierImage:
    """image = irfft2(scale * spectrum, orthonormal), scale = 1 / max(|frequency|, 1 / max(H, W)).

    Lucid's fft_image with decay power 1 (in cycles per pixel, as np.fft.fftfreq gives them):
    a step of the same size in every coefficient moves low frequencies more, which damps the
    high-frequency patterns plain pixel ascent produces. The parameter is the spectrum as a real
    (B, C, H, W // 2 + 1, 2) tensor of real and imaginary parts, so the step rule sees real numbers.
    """

    def __init__(self, height: int, width: int, dtype: torch.dtype, device: torch.device) -> None:
        fy = np.fft.fftfreq(height)[:, None]
        fx = np.fft.rfftfreq(width)[None, :]
        freqs = np.sqrt(fx * fx + fy * fy)
        self.scale = torch.tensor(1.0 / np.maximum(freqs, 1.0 / max(height, width)), dtype=dtype, device=device)
        self.size = (height, width)

    def init(self, x0: torch.Tensor) -> torch.Tensor:
        """The spectrum whose image is `x0`: rfft2(x0) / scale."""
        return torch.view_as_real(torch.fft.rfft2(x0, norm="ortho") / self.scale).clone()

    def image(self, p: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(torch.view_as_complex(p) * self.scale, s=self.size, norm="ortho")


def image_space(parameterization: str, x0: torch.Tensor) -> PixelImage | FourierImage:
    """The parameterization named `parameterization` for images shaped like `x0` (its dtype and device)."""
    if parameterization == "pixel":
        return PixelImage()
    if parameterization == "fourier":
        return FourierImage(x0.shape[-2], x0.shape[-1], x0.dtype, x0.device)
    raise ValueError(f"unknown parameterization {parameterization!r}; choose from {', '.join(PARAMETERIZATIONS)}")


def jitter_shifts(seed: int, restart: int, filters: Sequence[int], steps: int, jitter: int) -> np.ndarray:
    """(steps, B, 2) integer (dy, dx) rolls in [-jitter, jitter], filter f's from stream (seed, restart, f, 1)."""
    return np.stack([np.random.default_rng([seed, restart, f, 1]).integers(-jitter, jitter + 1, size=(steps, 2))
                     for f in filters], axis=1)


def roll_images(x: torch.Tensor, shifts: np.ndarray) -> torch.Tensor:
    """Image b of `x` (B, C, H, W) rolled circularly by shifts[b] = (dy, dx) pixels."""
    return torch.stack([torch.roll(img, (int(dy), int(dx)), dims=(1, 2)) for img, (dy, dx) in zip(x, shifts)])
