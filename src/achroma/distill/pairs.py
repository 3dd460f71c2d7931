"""Paired batches for distillation: each uint8 batch is drawn and augmented once, then split into the
teacher's view and the student's (e.g. color for the teacher, gray for the student) of the same images."""
from __future__ import annotations

from typing import Iterator

import torch

from ..data import BatchLoader, ImageDataset, Normalization, apply_mode, get_normalization, random_crop_flip


def two_views(images: torch.Tensor, teacher_mode: str, student_mode: str, augment: bool = False,
              generator: torch.Generator | None = None, flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, C, H, W) -> (teacher view, student view) as floats in [0, 1], before normalization.

    The augmentation (random crop and flip) is applied once, before the mode split, so both views
    show the very same crop of the very same image; a gray view is the luma of the color one.
    """
    x = images.float().div_(255)
    if augment:
        x = random_crop_flip(x, generator=generator, flip=flip)
    return apply_mode(x, teacher_mode), apply_mode(x, student_mode)


class PairedBatchLoader(BatchLoader):
    """A BatchLoader (student mode and normalization, same order and sharding) that yields
    (teacher input, student input, labels); the teacher's view has its own mode and normalization.

    With the same seed, epoch and batch size, the student inputs equal those of a plain
    `BatchLoader(..., mode=student_mode)`: a label-only baseline trained by `achroma.training.train`
    with the same seed sees the very same batches and augmentations.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int = 128, teacher_mode: str = "color",
                 student_mode: str = "gray", teacher_normalize: str | Normalization | dict | None = None,
                 student_normalize: str | Normalization | dict | None = None, **kwargs):
        super().__init__(dataset, batch_size, mode=student_mode, normalize=student_normalize, **kwargs)
        self.teacher_mode = teacher_mode
        self.teacher_normalize = get_normalization(teacher_normalize)
        apply_mode(torch.zeros(1, dataset.channels, 1, 1), teacher_mode)  # fail now, not at the first batch

    def views(self, images: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 batch -> (teacher input, student input), each normalized its own way."""
        xt, xs = two_views(images, self.teacher_mode, self.mode, self.augment, generator, self.flip)
        return self.teacher_normalize(xt), self.normalize(xs)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:  # type: ignore[override]
        for images, labels, g in self.batches():  # BatchLoader's batches: augmentations match batch for batch
            xt, xs = self.views(images, generator=g)
            yield xt, xs, labels
