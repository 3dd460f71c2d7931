"""Batches straight from memory (or GPU memory): mode, normalization and augmentation on tensors.

No per-sample Python work: a batch is gathered by index, cast to float, augmented as a whole
(random crop with zero padding, horizontal flip), converted to the color mode and normalized.
"""
from __future__ import annotations

from typing import Iterator

import torch

from .color import Normalization, apply_mode, get_normalization
from .dataset import ImageDataset


def random_crop_flip(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None,
                     flip: bool = True) -> torch.Tensor:
    """The standard CIFAR augmentation for a whole batch: pad with zeros, crop back at random, flip half
    (`flip=False`: crop only, for X-rays and documents, where left and right are not interchangeable)."""
    b, c, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
    flip = (torch.rand(b, generator=generator) < (0.5 if flip else 0.0)).to(dev)  # same draws either way
    rows = (oy[:, None] + torch.arange(h, device=dev)).view(b, 1, h, 1)
    cols = torch.arange(w, device=dev).expand(b, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + ox[:, None]
    batch = torch.arange(b, device=dev).view(b, 1, 1, 1)
    chans = torch.arange(c, device=dev).view(1, c, 1, 1)
    return padded[batch, chans, rows, cols.view(b, 1, 1, w)]


class BatchLoader:
    """Iterate (inputs, labels) batches of an ImageDataset in a color mode with a normalization.

    `rank`/`world_size` shard each epoch's permutation for distributed training: every process
    draws the same permutation (same seed and epoch) and takes every `world_size`-th index.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int = 128,
        mode: str = "color",
        normalize: str | Normalization | dict | None = None,
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        flip: bool = True,
    ):
        self.dataset = dataset
        self.batch_size = batch_size
        self.mode = mode
        self.normalize = get_normalization(normalize)
        self.shuffle, self.augment, self.drop_last, self.flip = shuffle, augment, drop_last, flip
        self.device = torch.device(device)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device)
        apply_mode(torch.zeros(1, dataset.channels, 1, 1), mode)  # fail now, not at the first batch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            per_rank = n // self.world_size if self.drop_last else -(-n // self.world_size)
            order = torch.cat([order, order[: per_rank * self.world_size - n]]) if per_rank * self.world_size > n else order
            order = order[self.rank: per_rank * self.world_size: self.world_size]
        return order

    def __len__(self) -> int:
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def transform(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 batch -> float, augmented if asked, in the loader's mode, normalized."""
        x = images.float().div_(255)
        if self.augment:
            x = random_crop_flip(x, generator=generator, flip=self.flip)
        return self.normalize(apply_mode(x, self.mode))

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Generator]]:
        """(uint8 images, labels, augmentation generator) per batch of this epoch and rank.

        Subclasses that turn a batch into other inputs iterate this, so they see the very same
        images and augmentation draws as a plain loader with the same seed and epoch."""
        order = self._indices().to(self.device)
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch * 31 + self.rank)
        for start in range(0, len(order), self.batch_size):
            idx = order[start: start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            yield self.images[idx], self.labels[idx], g

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels, g in self.batches():
            yield self.transform(images, generator=g), labels
