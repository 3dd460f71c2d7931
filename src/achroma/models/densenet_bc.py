"""DenseNet-BC for CIFAR (Huang et al. 2017): bottleneck layers and compressed transitions.

L=100, k=12: three dense blocks of 16 bottleneck layers (BN-ReLU-1x1 conv to 4k, BN-ReLU-3x3 conv
to k), transitions halving the channels (compression 0.5), global average pool and a linear head;
about 0.8M parameters. This is the model of `keras-densenet-bc.txt`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


class Bottleneck(nn.Module):
    """BN-ReLU-1x1 conv (4k) -> BN-ReLU-3x3 conv (k), concatenated to the input."""

    def __init__(self, in_channels: int, growth: int, bottleneck_width: int = 4):
        super().__init__()
        inner = bottleneck_width * growth
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, inner, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        return torch.cat([x, y], dim=1)


class CompressTransition(nn.Module):
    """BN-ReLU-1x1 conv to `out_channels` -> 2x2 average pool."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(F.relu(self.norm(x))))


class DenseNetBC(nn.Module):
    """DenseNet-BC with depth L and growth rate k for small (CIFAR-sized) images."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 10,
        depth: int = 100,
        growth: int = 12,
        compression: float = 0.5,
        bottleneck_width: int = 4,
    ):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n+4, got {depth}")
        n_layers = (depth - 4) // 6
        channels = 2 * growth
        self.stem = nn.Conv2d(in_chans, channels, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i in range(3):
            stages.append(
                nn.Sequential(*[Bottleneck(channels + j * growth, growth, bottleneck_width) for j in range(n_layers)])
            )
            channels += n_layers * growth
            if i < 2:
                out = int(channels * compression)
                stages.append(CompressTransition(channels, out))
                channels = out
        self.features = nn.Sequential(*stages)
        self.head_norm = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.head_norm(self.features(self.stem(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


@register_model("densenet-bc-100")
def densenet_bc_100(in_chans: int = 3, num_classes: int = 10, **kwargs) -> DenseNetBC:
    """DenseNet-BC, L=100, k=12, compression 0.5, bottleneck 4k (about 0.8M parameters)."""
    return DenseNetBC(in_chans=in_chans, num_classes=num_classes, depth=100, growth=12, **kwargs)
