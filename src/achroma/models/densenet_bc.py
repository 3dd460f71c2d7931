"""DenseNet-BC for CIFAR (Huang et al. 2017): bottleneck layers and compressed transitions.

L=100, k=12: three dense blocks of 16 bottleneck layers (BN-ReLU-1x1 conv to 4k, BN-ReLU-3x3 conv
to k), transitions halving the channels (compression 0.5), global average pool and a linear head;
about 0.8M parameters. This is the model of `keras-densenet-bc.txt`. `densenet-bc-40` is the same
family at L=40 (three blocks of 6), small enough to train on a CPU.

The same code builds the kDenseNet-BC of the grouped pointwise seed (k-neural-api
`cai.densenet.ksimple_densenet`): `pointwise` is a factory `(in_channels, out_channels, device=,
dtype=) -> module` for every 1x1 conv (bottlenecks and transitions), and `order="seed"` takes the
seed's layer order, which moves the activations: BN -> pointwise (its own activation inside) -> BN
-> 3x3 conv -> ReLU in a bottleneck, BN -> pointwise -> average pool in a transition. The seed adds
`interleave_at_transition` (its `has_interleave_at_transition`): before each transition's BN the
channels are interleaved with step = growth rate, so that each group of the transition's grouped
conv reads channels written by many layers of the block, not a few neighbours.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import ChannelInterleave, get_act_layer, grouped_pointwise_factory
from .registry import register_model

PointwiseFactory = Callable[..., nn.Module]
ORDERS = ("preact", "seed")


def dense_pointwise(in_channels: int, out_channels: int, device=None, dtype=None) -> nn.Conv2d:
    """The ordinary 1x1 conv without bias (the default `pointwise` factory)."""
    return nn.Conv2d(in_channels, out_channels, 1, bias=False, device=device, dtype=dtype)


def _check_order(order: str) -> str:
    if order not in ORDERS:
        raise ValueError(f"unknown layer order {order!r}; known: {', '.join(ORDERS)}")
    return order


class Bottleneck(nn.Module):
    """BN-act-1x1 conv (4k) -> BN-act-3x3 conv (k), concatenated to the input.

    order="seed": BN -> 1x1 (a pointwise module that applies its own activation) -> BN -> 3x3 conv
    -> ReLU (the seed keeps ReLU after the 3x3 conv whatever its `activation`).
    """

    def __init__(self, in_channels: int, growth: int, bottleneck_width: int = 4, *,
                 pointwise: PointwiseFactory = dense_pointwise, act_layer: Callable[[], nn.Module] = nn.ReLU,
                 order: str = "preact", device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        inner = bottleneck_width * growth
        self.order = _check_order(order)
        self.norm1 = nn.BatchNorm2d(in_channels, **kw)
        self.conv1 = pointwise(in_channels, inner, **kw)
        self.norm2 = nn.BatchNorm2d(inner, **kw)
        self.conv2 = nn.Conv2d(inner, growth, 3, padding=1, bias=False, **kw)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order == "seed":
            y = F.relu(self.conv2(self.norm2(self.conv1(self.norm1(x)))))
        else:
            y = self.conv1(self.act(self.norm1(x)))
            y = self.conv2(self.act(self.norm2(y)))
        return torch.cat([x, y], dim=1)


class CompressTransition(nn.Module):
    """[interleave] -> BN-act-1x1 conv to `out_channels` -> 2x2 average pool.

    order="seed": [interleave] -> BN -> 1x1 (applies its own activation) -> 2x2 average pool.
    `interleave_step` > 1 interleaves the input channels first (the seed's InterleaveChannels).
    """

    def __init__(self, in_channels: int, out_channels: int, *, pointwise: PointwiseFactory = dense_pointwise,
                 act_layer: Callable[[], nn.Module] = nn.ReLU, order: str = "preact", interleave_step: int = 0,
                 device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.order = _check_order(order)
        self.interleave = (ChannelInterleave.from_step(in_channels, interleave_step, device=device)
                           if interleave_step > 1 else None)
        self.norm = nn.BatchNorm2d(in_channels, **kw)
        self.conv = pointwise(in_channels, out_channels, **kw)
        self.act = act_layer()
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.interleave is not None:
            x = self.interleave(x)
        x = self.norm(x) if self.order == "seed" else self.act(self.norm(x))
        return self.pool(self.conv(x))


class DenseNetBC(nn.Module):
    """DenseNet-BC with depth L and growth rate k for small (CIFAR-sized) images.

    Defaults: Huang et al.'s pre-activation DenseNet-BC with ReLU and dense 1x1 convs. `pointwise`,
    `act_layer`, `order`, `stem_bias` and `interleave_at_transition` are the knobs the grouped
    (kDenseNet) variants turn; module names and the `features` indices do not depend on them.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 10,
        depth: int = 100,
        growth: int = 12,
        compression: float = 0.5,
        bottleneck_width: int = 4,
        *,
        pointwise: PointwiseFactory = dense_pointwise,
        transition_pointwise: PointwiseFactory | None = None,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
        order: str = "preact",
        stem_bias: bool = False,
        interleave_at_transition: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n+4, got {depth}")
        kw = dict(device=device, dtype=dtype)
        layer_kw = dict(act_layer=act_layer, order=order, **kw)
        transition_pointwise = transition_pointwise or pointwise
        n_layers = (depth - 4) // 6
        channels = 2 * growth
        self.stem = nn.Conv2d(in_chans, channels, 3, padding=1, bias=stem_bias, **kw)
        stages: list[nn.Module] = []
        for i in range(3):
            stages.append(nn.Sequential(*[
                Bottleneck(channels + j * growth, growth, bottleneck_width, pointwise=pointwise, **layer_kw)
                for j in range(n_layers)
            ]))
            channels += n_layers * growth
            if i < 2:
                out = int(channels * compression)
                stages.append(CompressTransition(channels, out, pointwise=transition_pointwise,
                                                 interleave_step=growth if interleave_at_transition else 0,
                                                 **layer_kw))
                channels = out
        self.features = nn.Sequential(*stages)
        self.head_norm = nn.BatchNorm2d(channels, **kw)
        self.head_act = act_layer()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head_act(self.head_norm(self.features(self.stem(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


def kdensenet_bc(in_chans: int = 3, num_classes: int = 10, depth: int = 100, *, growth: int = 12,
                 bottleneck: int = 48, compression: float = 0.5, min_channels_per_group: int = 12,
                 transition_min_channels_per_group: int | None = None, activation: str = "silu",
                 group_rule: str = "seed", interleave_at_transition: bool = True, order: str = "seed",
                 stem_bias: bool = True, **kwargs) -> DenseNetBC:
    """The seed's kDenseNet-BC (`ksimple_densenet` with D6 kTypes): grouped pointwise convs everywhere.

    Follows the seed: stem of 2k filters with bias, blocks of BN -> grouped pointwise (activation
    inside) -> BN -> 3x3 conv -> ReLU, transitions interleaved with step k then BN -> grouped
    pointwise -> average pool, head BN -> activation -> global average pool -> linear (the seed's
    softmax is the loss's business here). `min_channels_per_group` is the seed's kTypeBlock
    (D6_12ch = 12), `transition_min_channels_per_group` its kTypeTransition (default: the same).
    `bottleneck` is the 1x1 output width (the seed's 48 = 4k) and must be a multiple of `growth`.
    Differs: BN uses PyTorch's epsilon and momentum, not Keras's; no L2 decay in the model.
    """
    if bottleneck % growth:
        raise ValueError(f"bottleneck ({bottleneck}) must be a multiple of growth ({growth})")
    act = get_act_layer(activation)
    block = grouped_pointwise_factory(min_channels_per_group, rule=group_rule, act_layer=act)
    transition = grouped_pointwise_factory(transition_min_channels_per_group or min_channels_per_group,
                                           rule=group_rule, act_layer=act)
    return DenseNetBC(in_chans=in_chans, num_classes=num_classes, depth=depth, growth=growth,
                      compression=compression, bottleneck_width=bottleneck // growth, pointwise=block,
                      transition_pointwise=transition, act_layer=act, order=order, stem_bias=stem_bias,
                      interleave_at_transition=interleave_at_transition, **kwargs)


@register_model("densenet-bc-100")
def densenet_bc_100(in_chans: int = 3, num_classes: int = 10, **kwargs) -> DenseNetBC:
    """DenseNet-BC, L=100, k=12, compression 0.5, bottleneck 4k (about 0.8M parameters)."""
    return DenseNetBC(in_chans=in_chans, num_classes=num_classes, depth=100, growth=12, **kwargs)


@register_model("densenet-bc-40")
def densenet_bc_40(in_chans: int = 3, num_classes: int = 10, **kwargs) -> DenseNetBC:
    """DenseNet-BC, L=40 (three blocks of 6), k=12, compression 0.5, bottleneck 4k: a CPU-trainable size."""
    return DenseNetBC(in_chans=in_chans, num_classes=num_classes, depth=40, growth=12, **kwargs)


@register_model("kdensenet-bc-100")
def kdensenet_bc_100(in_chans: int = 3, num_classes: int = 10, **kwargs) -> DenseNetBC:
    """kDenseNet-BC L100 12ch of the grouped pointwise seed: k=12, bottleneck 48, 12 channels per group."""
    return kdensenet_bc(in_chans=in_chans, num_classes=num_classes, depth=100, **kwargs)


@register_model("kdensenet-bc-40")
def kdensenet_bc_40(in_chans: int = 3, num_classes: int = 10, **kwargs) -> DenseNetBC:
    """kDenseNet-BC L40 12ch (the seed's ksimple_densenet default depth), the grouped partner of densenet-bc-40."""
    return kdensenet_bc(in_chans=in_chans, num_classes=num_classes, depth=40, **kwargs)
