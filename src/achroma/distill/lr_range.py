"""The peak learning rate of a distillation epoch from a short range test (Smith, "Cyclical Learning
Rates", 2017), run by torch-lr-finder on a copy of the student.

The learning rate grows exponentially from `START_LR` to `END_LR` over `RANGE_STEPS` batches of the
distillation loss (the same loader, loss and optimizer as `distill`); the smoothed loss is recorded,
and the rate where it was lowest, divided by `BACKOFF`, is the answer (the usual rule: the minimum
itself is already past the fastest stable descent). The student is not changed.
"""
from __future__ import annotations

import copy
import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch_lr_finder import LRFinder, TrainDataLoaderIter

from ..data import ImageDataset, get_normalization
from ..training import TrainConfig, make_optimizer
from .losses import distillation_loss
from .pairs import PairedBatchLoader

RANGE_STEPS = 100
START_LR, END_LR = 1e-5, 1.0
BACKOFF = 10.0


@dataclass
class LrRange:
    """The chosen rate and the curve it was read from (rates and smoothed losses, step by step)."""

    lr: float
    lrs: list[float]
    losses: list[float]


class _TeacherTargets(TrainDataLoaderIter):
    """(student input, (teacher logits, labels)) batches for the finder, from `PairedBatchLoader`."""

    def __init__(self, loader: PairedBatchLoader, teacher: nn.Module):
        super().__init__(loader)
        self.teacher = teacher

    def inputs_labels_from_batch(self, batch):
        xt, xs, y = batch
        with torch.no_grad():
            return xs, (self.teacher(xt).float(), y)


def distill_lr_range(student: nn.Module, teacher: nn.Module, images: ImageDataset, config: TrainConfig, *,
                     teacher_mode: str, student_mode: str, teacher_normalize, student_normalize,
                     loss: str = "mse", T: float = 4.0, alpha: float = 0.5, steps: int = RANGE_STEPS) -> LrRange:
    """Range-test the distillation of `student` from `teacher` on `images` (`config`: batch size,
    momentum, weight decay, device, seed; its lr is ignored) and return the chosen peak rate."""
    device = config.resolved_device()
    trial = copy.deepcopy(student).to(device)
    teacher = teacher.to(device).eval()
    t_norm = get_normalization(teacher_normalize)
    loader = PairedBatchLoader(images, min(config.batch_size, len(images)), teacher_mode=teacher_mode,
                               student_mode=student_mode, teacher_normalize=t_norm,
                               student_normalize=get_normalization(student_normalize), shuffle=True,
                               augment=config.augment, drop_last=True, device=device, seed=config.seed)
    optimizer = make_optimizer(trial, replace(config, lr=START_LR))

    def criterion(outputs: torch.Tensor, targets: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return distillation_loss(loss, outputs, targets[0], targets[1], T=T, alpha=alpha)

    torch.manual_seed(config.seed)
    finder = LRFinder(trial, optimizer, criterion, device=device)
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):  # its progress bar and messages
        finder.range_test(_TeacherTargets(loader, teacher), end_lr=END_LR, num_iter=steps, step_mode="exp")
    lrs, losses = list(finder.history["lr"]), [float(v) for v in finder.history["loss"]]
    best = min(range(len(losses)), key=lambda i: losses[i] if losses[i] == losses[i] else float("inf"))  # NaN: diverged
    return LrRange(lr=lrs[best] / BACKOFF, lrs=lrs, losses=losses)
