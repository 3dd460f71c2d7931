"""The DenseNet of the achromatic notebook (Keras), rebuilt layer for layer in PyTorch.

First conv 36 filters 3x3 without bias; four dense blocks of 12 layers (BN, ReLU, 3x3 conv of
18 filters without bias, concatenated to the input); a transition after each of the first three
blocks (BN, ReLU, 1x1 conv to 18 channels with an L1 weight penalty, 2x2 average pool); head:
BN, ReLU, 2x2 average pool, 2x2 conv to the classes with bias. 981,658 trainable parameters and
13,572 BN running-statistic entries, as in the notebook's Keras summary (995,230 in all).

`kseed-densenet` and `kseed-densenet-tiny` are the grouped pointwise seed applied to this family:
each transition's 1x1 conv becomes the seed's grouped pointwise block (`achroma.layers`), and the
transition input is interleaved with step = growth rate first, as `ksimple_densenet` does with
`has_interleave_at_transition`. The transition keeps this family's order (BN, ReLU, 1x1, pool) and
its linear 1x1 (no activation inside the grouped block unless `activation` is given: the seed's D6
layer without an activation is linear too). The dense blocks have no 1x1 conv to group.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import ChannelInterleave, grouped_pointwise_factory
from .registry import register_model


class DenseLayer(nn.Module):
    """BN -> ReLU -> 3x3 conv, whose output is concatenated to the layer's input."""

    def __init__(self, in_channels: int, growth: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(F.relu(self.norm(x)))], dim=1)


class Transition(nn.Module):
    """[interleave] -> BN -> ReLU -> 1x1 conv -> 2x2 average pool; `l1` is the Keras L1 penalty on the conv weight.

    `pointwise(in, out)` builds the 1x1 conv (default: dense, no bias); `interleave_step` > 1 puts
    the seed's channel interleaving in front (the grouped variants).
    """

    def __init__(self, in_channels: int, out_channels: int, l1: float = 0.0, *,
                 pointwise: Callable[..., nn.Module] | None = None, interleave_step: int = 0):
        super().__init__()
        self.interleave = ChannelInterleave.from_step(in_channels, interleave_step) if interleave_step > 1 else None
        self.norm = nn.BatchNorm2d(in_channels)
        self.conv = pointwise(in_channels, out_channels) if pointwise else nn.Conv2d(in_channels, out_channels, 1,
                                                                                       bias=False)
        self.pool = nn.AvgPool2d(2)
        self.l1 = l1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.interleave is not None:
            x = self.interleave(x)
        return self.pool(self.conv(F.relu(self.norm(x))))


class SeedDenseNet(nn.Module):
    """The notebook's DenseNet family; defaults give the notebook's model exactly."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 10,
        stem_channels: int = 36,
        growth: int = 18,
        block_layers: tuple[int, ...] = (12, 12, 12, 12),
        transition_channels: int = 18,
        transition_l1: float = 0.01,
        *,
        transition_pointwise: Callable[..., nn.Module] | None = None,
        interleave_at_transition: bool = False,
    ):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, stem_channels, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        channels = stem_channels
        for i, n_layers in enumerate(block_layers):
            block = nn.Sequential(*[DenseLayer(channels + j * growth, growth) for j in range(n_layers)])
            stages.append(block)
            channels += n_layers * growth
            if i < len(block_layers) - 1:
                stages.append(Transition(channels, transition_channels, l1=transition_l1,
                                         pointwise=transition_pointwise,
                                         interleave_step=growth if interleave_at_transition else 0))
                channels = transition_channels
        self.features = nn.Sequential(*stages)
        self.head_norm = nn.BatchNorm2d(channels)
        # Keras pools 4x4 -> 2x2 then applies a 2x2 conv; adaptive pooling keeps that exact at
        # 32x32 input and lets other input sizes (28x28 MNIST-like) work too.
        self.head_pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Conv2d(channels, num_classes, 2, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.stem(x))
        x = self.head_pool(F.relu(self.head_norm(x)))
        return torch.flatten(self.classifier(x), 1)

    def regularization_loss(self) -> torch.Tensor:
        """The Keras kernel_regularizer=l1() terms of the transitions (added to the training loss).

        A grouped transition puts the penalty on the weights of every conv inside its block.
        """
        terms = [m.l1 * conv.weight.abs().sum() for m in self.modules() if isinstance(m, Transition) and m.l1
                 for conv in m.conv.modules() if isinstance(conv, nn.Conv2d)]
        return torch.stack(terms).sum() if terms else torch.zeros(())


@register_model("seed-densenet")
def seed_densenet(in_chans: int = 3, num_classes: int = 10, **kwargs) -> SeedDenseNet:
    """The notebook's model: 36-filter stem, 4 blocks x 12 layers, growth 18, transitions to 18."""
    return SeedDenseNet(in_chans=in_chans, num_classes=num_classes, **kwargs)


# The embedded demo model's configuration, shared by its grouped variant.
_TINY = dict(stem_channels=24, growth=12, block_layers=(4, 4, 4), transition_channels=24)


@register_model("seed-densenet-tiny")
def seed_densenet_tiny(in_chans: int = 3, num_classes: int = 10, **kwargs) -> SeedDenseNet:
    """A small member of the seed family (the embedded demo model): 24-filter stem, 3 blocks x 4."""
    return SeedDenseNet(in_chans=in_chans, num_classes=num_classes, **{**_TINY, **kwargs})


def kseed_densenet_model(in_chans: int = 3, num_classes: int = 10, *, min_channels_per_group: int = 16,
                         activation: str | None = None, group_rule: str = "seed",
                         interleave_at_transition: bool = True, **kwargs) -> SeedDenseNet:
    """A SeedDenseNet whose transitions are the seed's grouped pointwise blocks.

    Default 16 channels per group (the seed's D6_16ch, its usual setting): with 12 the 252 -> 18
    first transition of `kseed-densenet` gets 18 groups of one output channel, whose mixing conv is
    then a per-channel scale (the seed's rule allows it, but nothing is mixed).
    """
    pointwise = grouped_pointwise_factory(min_channels_per_group, rule=group_rule, act_layer=activation)
    return SeedDenseNet(in_chans=in_chans, num_classes=num_classes, transition_pointwise=pointwise,
                        interleave_at_transition=interleave_at_transition, **kwargs)


@register_model("kseed-densenet")
def kseed_densenet(in_chans: int = 3, num_classes: int = 10, **kwargs) -> SeedDenseNet:
    """seed-densenet with grouped pointwise transitions (16 channels per group) interleaved at step 18."""
    return kseed_densenet_model(in_chans=in_chans, num_classes=num_classes, **kwargs)


@register_model("kseed-densenet-tiny")
def kseed_densenet_tiny(in_chans: int = 3, num_classes: int = 10, **kwargs) -> SeedDenseNet:
    """seed-densenet-tiny with grouped pointwise transitions (16 channels per group) interleaved at step 12."""
    return kseed_densenet_model(in_chans=in_chans, num_classes=num_classes, **{**_TINY, **kwargs})
