"""Find the dense pointwise convs of any model from its forward pass, not from layer names.

A candidate is an `nn.Conv2d` that the forward pass calls (a dry run on one zero image with a hook
on every conv: `models.inspect`'s way of tracing, which also follows data-dependent control flow
that torch.fx cannot trace) with a 1x1 kernel, one group, no padding, and at least
2 x `min_channels` input channels (fewer cannot form two groups of `min_channels`). The hook also
records the output's spatial size, from which per-layer MACs follow.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..models.inspect import input_channels


@dataclass
class PointwiseConv:
    """A dense 1x1 conv found in the forward pass."""

    layer: str
    in_channels: int
    out_channels: int
    stride: int
    bias: bool
    out_pixels: int  # output height x width at the example input


def is_dense_pointwise(module: nn.Module) -> bool:
    """A plain Conv2d with a 1x1 kernel, one group, no padding and equal strides."""
    return (type(module) is nn.Conv2d and tuple(module.kernel_size) == (1, 1) and module.groups == 1
            and tuple(module.padding) == (0, 0) and module.stride[0] == module.stride[1])


@torch.no_grad()
def find_pointwise_convs(model: nn.Module, min_channels: int = 16, size: int = 32) -> list[PointwiseConv]:
    """The candidate convs (see the module docstring), in the order the forward pass first calls them."""
    names = {m: name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    found: dict[str, PointwiseConv] = {}

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        name = names[module]
        if name in found or not is_dense_pointwise(module) or module.in_channels < 2 * max(1, min_channels):
            return
        found[name] = PointwiseConv(name, module.in_channels, module.out_channels, int(module.stride[0]),
                                    module.bias is not None, int(output.shape[-2] * output.shape[-1]))

    channels = input_channels(model, size)
    handles = [m.register_forward_hook(hook) for m in names]
    param = next(model.parameters())
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()(torch.zeros(1, channels, size, size, dtype=param.dtype, device=param.device))
    finally:
        for m, flag in flags.items():
            m.training = flag
        for h in handles:
            h.remove()
    return list(found.values())
