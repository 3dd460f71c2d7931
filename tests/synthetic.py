"""A tiny random-pixel data set for pipeline tests (10 classes, uint8 color images)."""
from __future__ import annotations

import torch

from achroma.data import ImageDataset


def random_images(n: int, size: int = 32, seed: int = 0, split: str = "train") -> ImageDataset:
    """`n` seeded random color images of `size` x `size`, labels 0..9 in turn."""
    g = torch.Generator().manual_seed(seed)
    return ImageDataset(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                        torch.arange(n) % 10, [f"c{i}" for i in range(10)], name="synthetic", split=split)


def brightness_classes(n: int, seed: int = 0, size: int = 28, split: str = "train") -> ImageDataset:
    """`n` gray images whose class (0 or 1, in turn) is their brightness: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = (torch.rand(n, 1, size, size, generator=g) * 60 + labels.view(-1, 1, 1, 1) * 150).to(torch.uint8)
    return ImageDataset(images, labels, ["normal", "pneumonia"], name="toy", split=split)
