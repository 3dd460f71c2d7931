"""A tiny random-pixel data set for pipeline tests (10 classes, uint8 color images)."""
from __future__ import annotations

import torch

from achroma.data import ImageDataset


def random_images(n: int, size: int = 32, seed: int = 0, split: str = "train") -> ImageDataset:
    """`n` seeded random color images of `size` x `size`, labels 0..9 in turn."""
    g = torch.Generator().manual_seed(seed)
    return ImageDataset(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                        torch.arange(n) % 10, [f"c{i}" for i in range(10)], name="synthetic", split=split)
