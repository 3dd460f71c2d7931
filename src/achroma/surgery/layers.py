"""Layers and Torch-Pruning pruners the surgery needs beyond what the dependency graph maps alone.

`ChannelMapShortcut` replaces the CIFAR ResNets' option-A `PadShortcut`: a tracer sees the zero
padding as an element-wise op and would tie the narrow and the wide residual streams channel for
channel (16 -> 32 -> 64 all coupled), and symmetric padding cannot express which stream channel a
surviving input channel lands on once channels are removed. A fixed 0/1 channel-map matrix (a buffer,
not a parameter) can: merging averages its rows (it produces the wide stream) and sums its columns
(it reads the narrow one), exactly like a 1x1 conv, and its pruner keeps the two streams apart.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_pruning.pruner.function import BasePruningFunc, ConvPruner

from ..fold.border import BorderCorrectedConv2d
from ..models.resnet_cifar import PadShortcut


class ChannelMapShortcut(nn.Module):
    """Subsample by `stride`, then out[:, o] = sum_i matrix[o, i] * x[:, i] (a fixed, untrained map)."""

    def __init__(self, matrix: torch.Tensor, stride: int = 1):
        super().__init__()
        self.stride = int(stride)
        self.register_buffer("matrix", matrix.clone())

    @property
    def in_channels(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def out_channels(self) -> int:
        return int(self.matrix.shape[0])

    @classmethod
    def from_pad_shortcut(cls, pad: PadShortcut, dtype: torch.dtype = torch.float32,
                          device: torch.device | str = "cpu") -> "ChannelMapShortcut":
        """The exact equivalent of an option-A shortcut: input channel i lands on output i + extra // 2."""
        extra = pad.out_channels - pad.in_channels
        matrix = torch.zeros(pad.out_channels, pad.in_channels, dtype=dtype, device=device)
        matrix[torch.arange(pad.in_channels) + extra // 2, torch.arange(pad.in_channels)] = 1.0
        return cls(matrix, pad.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.conv2d(x, self.matrix.to(x.dtype)[:, :, None, None])

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def convert_shortcuts(model: nn.Module) -> nn.Module:
    """Replace every `PadShortcut` in `model` (in place) by its exact `ChannelMapShortcut`; returns model."""
    like = next(model.parameters(), torch.empty(0))
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PadShortcut):
                new = ChannelMapShortcut.from_pad_shortcut(child, dtype=like.dtype, device=like.device)
                new.train(child.training)
                setattr(parent, name, new)
    return model


def _keep(n: int, idxs: Sequence[int]) -> list[int]:
    drop = set(int(i) for i in idxs)
    return [i for i in range(n) if i not in drop]


class ChannelMapPruner(BasePruningFunc):
    """Rows of the map are output channels, columns input channels; the two are not coupled."""

    TARGET_MODULES = ChannelMapShortcut

    def prune_out_channels(self, layer: ChannelMapShortcut, idxs: Sequence[int]) -> nn.Module:
        layer.matrix = layer.matrix[_keep(layer.out_channels, idxs)].contiguous()
        return layer

    def prune_in_channels(self, layer: ChannelMapShortcut, idxs: Sequence[int]) -> nn.Module:
        layer.matrix = layer.matrix[:, _keep(layer.in_channels, idxs)].contiguous()
        return layer

    def get_out_channels(self, layer: ChannelMapShortcut) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: ChannelMapShortcut) -> int:
        return layer.in_channels


class BorderConvPruner(ConvPruner):
    """A conv pruner that also drops the pruned output channels of `border_kernel`."""

    TARGET_MODULES = BorderCorrectedConv2d

    def prune_out_channels(self, layer: BorderCorrectedConv2d, idxs: Sequence[int]) -> nn.Module:
        keep = _keep(layer.out_channels, idxs)
        super().prune_out_channels(layer, idxs)
        layer.border_kernel = layer.border_kernel[keep].contiguous()
        return layer


def customized_pruners() -> dict[type, BasePruningFunc]:
    """Fresh pruner instances for the layer types the dependency graph needs told about."""
    return {ChannelMapShortcut: ChannelMapPruner(), BorderCorrectedConv2d: BorderConvPruner()}
