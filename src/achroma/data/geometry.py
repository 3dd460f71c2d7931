"""Bring a data set to the input size a model was trained at: zero-pad or resize, decided once.

The source models are trained at 32x32 and MedMNIST / Fashion-MNIST images are 28x28. The choice
(`InputGeometry`) is applied to the uint8 images once, in the data layer, and recorded in the
checkpoint's JSON under "input", so `evaluate` later feeds the model what it was trained on.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .dataset import ImageDataset

FITS = ("none", "pad", "resize")


@dataclass(frozen=True)
class InputGeometry:
    """`size`: the side the model takes (None: as the data come); `fit`: 'pad' (zeros around the
    image, centred; the content keeps its scale), 'resize' (bilinear, antialiased), 'none'."""

    size: int | None = None
    fit: str = "none"

    def __post_init__(self) -> None:
        if self.fit not in FITS:
            raise ValueError(f"unknown input fit {self.fit!r}; choose {', '.join(FITS)}")
        if self.fit != "none" and (self.size is None or self.size < 1):
            raise ValueError(f"fit {self.fit!r} needs a positive size, got {self.size}")

    def to_dict(self) -> dict:
        return {"size": self.size, "fit": self.fit}

    @classmethod
    def from_dict(cls, d: dict | None) -> "InputGeometry":
        return cls() if not d else cls(size=d.get("size"), fit=d.get("fit", "none"))


def fit_images(images: torch.Tensor, geometry: InputGeometry) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size) by the geometry's fit (unchanged for 'none')."""
    if geometry.fit == "none" or tuple(images.shape[-2:]) == (geometry.size, geometry.size):
        return images
    h, w = images.shape[-2:]
    size = int(geometry.size)
    if geometry.fit == "pad":
        if h > size or w > size:
            raise ValueError(f"cannot zero-pad {h}x{w} images to {size}x{size}: use --image-size {size} (resize)")
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(images, (left, size - w - left, top, size - h - top))
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                        antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def fit_dataset(dataset: ImageDataset, geometry: InputGeometry) -> ImageDataset:
    """The data set at the geometry's size (a new ImageDataset; the geometry recorded in `extra`)."""
    if geometry.fit == "none":
        return dataset
    return ImageDataset(fit_images(dataset.images, geometry), dataset.labels, list(dataset.classes), dataset.name,
                        dataset.split, dataset.source, {**dataset.extra, "input": geometry.to_dict()})
