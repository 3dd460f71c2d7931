"""The channel groups of a whole network: the units that merging, budgets and baselines work on.

A channel group is a set of channels that must shrink together: every conv, BN and shortcut that
writes them and every layer that reads them. A block's inner conv is a group of its own; a residual
stream (a ResNet stage: the stem or first block's conv, each block's second conv, the shortcut) is
one group however many convs write it; a DenseNet layer's growth channels are a group read by every
later layer of its block. Groups are found from the traced graph, in forward order, each named by
its root: the first conv of the forward pass that writes it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..grouping.module import PermutedGroupedConv
from ..models.inspect import conv_forward_order
from .graph import ChannelUse, build_graph, channel_uses
from .layers import convert_shortcuts


@dataclass
class ChannelGroup:
    """One group: its root conv, the convs that write it, its width, and every module's use of it."""

    root: str
    writers: list[str]
    channels: int
    uses: list[ChannelUse] = field(default_factory=list)
    refused: str | None = None  # why it cannot be merged (then uses is empty)

    @property
    def kind(self) -> str:
        return "stream" if len(self.writers) > 1 else "inner"

    def summary(self) -> dict[str, Any]:
        return {"root": self.root, "writers": self.writers, "channels": self.channels, "kind": self.kind,
                "refused": self.refused}


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def channel_groups(model: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    """Every channel group of `model` in forward order (one trace; the model is not modified).

    Depthwise convs write their input's channels again and belong to that group; a group the
    surgery cannot merge is listed with the reason in `refused`.
    """
    work = convert_shortcuts(copy.deepcopy(model))
    dg = build_graph(work, example_input)
    size = int(example_input.shape[-1])
    groups: list[ChannelGroup] = []
    covered: set[str] = set()
    order = conv_forward_order(work, size)
    for path in order:
        conv = work.get_submodule(path)
        if path in covered or _is_depthwise(conv):
            continue
        try:
            uses = channel_uses(dg, work, conv)
        except ValueError as err:
            groups.append(ChannelGroup(path, [path], conv.out_channels, refused=str(err)))
            covered.add(path)
            continue
        writers = [u.path for u in uses if u.role == "producer" and isinstance(work.get_submodule(u.path), nn.Conv2d)
                   and not _is_depthwise(work.get_submodule(u.path))]
        writers = [p for p in order if p in set(writers)] or [path]
        covered.update(writers)
        for u in uses:  # a grouped pointwise conv writing the group: its inner convs are not groups of their own
            module = work.get_submodule(u.path)
            if u.role == "producer" and isinstance(module, PermutedGroupedConv):
                covered.update(f"{u.path}.{name}" for name, m in module.named_modules() if isinstance(m, nn.Conv2d))
        if not any(u.role == "consumer" for u in uses):  # nothing reads them: the model's outputs (classes)
            groups.append(ChannelGroup(path, writers, conv.out_channels, refused="its channels are the model's outputs"))
            continue
        groups.append(ChannelGroup(path, writers, conv.out_channels, uses))
    return groups
