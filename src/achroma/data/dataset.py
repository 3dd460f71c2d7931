"""The one in-memory form every data set takes: uint8 images (N, C, H, W) and int64 labels."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageDataset:
    """A split of a data set, decoded once, kept as uint8 so that 60,000 CIFAR images take 184 MB."""

    images: torch.Tensor  # uint8, (N, C, H, W), C is 1 (gray) or 3 (RGB)
    labels: torch.Tensor  # int64, (N,)
    classes: list[str]
    name: str = ""
    split: str = ""
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.images.shape[1] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels, got {self.images.shape[1]}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices) -> "ImageDataset":
        """A new data set holding the given indices (a slice, list or tensor)."""
        idx = torch.as_tensor(indices) if not isinstance(indices, slice) else indices
        return ImageDataset(self.images[idx], self.labels[idx], list(self.classes), self.name, self.split,
                            self.source, dict(self.extra))

    def stratified_subset(self, per_class: int, seed: int = 0) -> "ImageDataset":
        """The first `per_class` images of each class after a seeded shuffle."""
        return self.stratified_split(per_class, seed)[0]

    def stratified_split(self, per_class: int, seed: int = 0) -> tuple["ImageDataset", "ImageDataset"]:
        """(the `stratified_subset`, everything else): e.g. a validation split carved from training."""
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=g)
        picked = torch.cat([order[self.labels[order] == c][:per_class] for c in range(self.num_classes)])
        rest = torch.ones(len(self), dtype=torch.bool)
        rest[picked] = False
        return self.subset(picked.sort().values), self.subset(torch.nonzero(rest).flatten())
