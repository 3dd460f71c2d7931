"""1 - Pearson correlation of the filters' output maps on calibration images.

Measured at the conv's output (before BN and the nonlinearity) because that is what the merge
acts on: the merged channel's output is the mean of its members' conv outputs (at their common
BN scale), so channels whose conv outputs are correlated lose little, and the correlation is
unchanged by the per-channel affine map a BN applies. Every spatial position of every image is
one sample. Exact duplicates get distance 0, channels equal up to a positive scale and shift 0,
anti-correlated ones 2. A channel that is constant on the calibration images has no correlation:
it gets distance 0 to a constant channel of the same value and 1 to every other channel.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from ._common import Paths, writer_convs
from .base import DistanceSelection, SelectionInput, register_selection


class _Moments:
    """Running first and second moments of C channels, in float64, shifted by the first batch's mean."""

    def __init__(self) -> None:
        self.n = 0
        self.shift: torch.Tensor | None = None
        self.s1: torch.Tensor | None = None
        self.s2: torch.Tensor | None = None

    def add(self, out: torch.Tensor) -> None:
        x = out.detach().to(torch.float64).transpose(0, 1).reshape(out.shape[1], -1)  # (C, samples)
        if self.shift is None:
            self.shift = x.mean(1, keepdim=True)
            self.s1 = torch.zeros_like(self.shift[:, 0])
            self.s2 = torch.zeros(x.shape[0], x.shape[0], dtype=torch.float64, device=x.device)
        x = x - self.shift
        self.n += x.shape[1]
        self.s1 += x.sum(1)
        self.s2 += x @ x.T

    def distances(self) -> np.ndarray:
        mean = (self.s1 / self.n).cpu().numpy()
        cov = (self.s2 / self.n).cpu().numpy() - np.outer(mean, mean)
        cov = 0.5 * (cov + cov.T)
        var = np.clip(np.diag(cov), 0.0, None)
        top = float(var.max())
        varying = var > 1e-12 * top if top > 0 else np.zeros(var.size, dtype=bool)
        std = np.sqrt(np.where(varying, var, 1.0))
        dist = 1.0 - cov / np.outer(std, std)
        level = mean + self.shift[:, 0].cpu().numpy()  # the constant channels' values
        same = np.isclose(level[:, None], level[None, :], rtol=1e-9, atol=1e-12)
        dist = np.where(varying[:, None] & varying[None, :], dist, 1.0)
        dist = np.where(~varying[:, None] & ~varying[None, :] & same, 0.0, dist)
        dist = np.clip(0.5 * (dist + dist.T), 0.0, 2.0)
        np.fill_diagonal(dist, 0.0)
        return dist


def _images(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def activation_distances(model: nn.Module, path: Paths, batches: Iterable[Any],
                         max_batches: int | None = None) -> np.ndarray:
    """N x N 1 - correlation of `path`'s N output channels over the images of `batches`.

    `batches` yields image tensors or (images, labels) pairs, in the input format `model` takes
    (raw [0, 1] gray for a folded model); the model runs in eval mode and is left as it was. `path`
    may list a group's writers: the matrix is then the mean of the writers' matrices.
    """
    convs = writer_convs(model, path)
    moments = {p: _Moments() for p, _, _ in convs}
    handles = [conv.register_forward_hook(lambda _m, _i, out, p=p, r=rows: moments[p].add(out[:, r]))
               for p, conv, rows in convs]
    flags = {m: m.training for m in model.modules()}
    param = next(model.parameters())
    try:
        model.eval()
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            model(_images(batch).to(param.device, param.dtype))
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
    missing = [p for p, m in moments.items() if m.n == 0]
    if missing:
        raise ValueError(f"no calibration image reached layer(s) {missing} (empty batches, or not on the forward path)")
    return np.mean([m.distances() for m in moments.values()], axis=0)


CALIBRATION_IMAGES = 500  # images whose activations the 'activations' selection correlates


@register_selection
class ActivationSelection(DistanceSelection):
    name = "activations"
    help = "1 - correlation of the channels' outputs on calibration images"

    def distances(self, inp: SelectionInput) -> tuple[np.ndarray, dict]:
        from ..data import BatchLoader

        if inp.calibration is None:
            raise ValueError("selection 'activations' needs calibration images")
        calib = inp.calibration
        if len(calib) > CALIBRATION_IMAGES:
            calib = calib.stratified_subset(max(1, CALIBRATION_IMAGES // max(1, len(calib.classes))), seed=inp.seed)
        batches = BatchLoader(calib, batch_size=100, mode="gray", normalize="none", device=inp.device)
        return activation_distances(inp.model, inp.group.rows, batches), {}
