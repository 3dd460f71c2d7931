"""The fields' metric applied to the conv's kernels themselves: no gradient ascent.

Each filter's kernel, (in, k, k) (in / groups for a grouped conv), is read as a k x k image with
`in` channels, the (N, C, H, W) stack `achroma.distances.pairwise_distances` takes: mse and cosine
flatten all channels together, imed applies its Gaussian per channel and adds the squared
distances, ssim is computed per channel and averaged (skimage's channel_axis convention). SSIM's
window cannot exceed the kernel: its default `win_size` here is the largest odd size <= min(k, 7)
(1 for a 1x1 conv, where SSIM keeps only its luminance term: a comparison of the weight values).
For a folded first conv the kernel is the gray kernel sum_c w_c / s_c (one channel); its border
correction is not part of it.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..distances import pairwise_distances
from ._common import Paths, writer_convs
from .base import DistanceSelection, SelectionInput, register_selection


def _ssim_window(kernel_size: tuple[int, int]) -> int:
    side = min(7, *kernel_size)
    return side if side % 2 == 1 else side - 1


def kernel_distances(gray_model: nn.Module, path: Paths, metric: str = "mse", **kw: Any) -> np.ndarray:
    """N x N distances between the kernels of `path`'s N filters under `metric` (`kw` go to the metric).

    `path` may list a group's writers (every conv adding into one residual stream): the matrix is
    then the mean of the writers' matrices, each writer's kernels compared among themselves.
    """
    mats = []
    for _path, conv, rows in writer_convs(gray_model, path):
        kernels = conv.weight.detach()[rows].to("cpu", torch.float64).numpy()
        args = dict(kw)
        if metric == "ssim":
            args.setdefault("win_size", _ssim_window(tuple(kernels.shape[-2:])))
        mats.append(pairwise_distances(kernels, metric, **args))
    return np.mean(mats, axis=0)


@register_selection
class KernelSelection(DistanceSelection):
    name = "kernels"
    help = "the metric on the folded kernels (is the ascent worth its cost?)"
    needs_metric = True

    def distances(self, inp: SelectionInput) -> tuple[np.ndarray, dict[str, Any]]:
        return kernel_distances(inp.model, inp.group.rows, inp.metric or "mse", **inp.metric_kw), {}
