"""Test helper: make channels exact duplicates in every module that produces them."""
from __future__ import annotations

import torch
import torch.nn as nn

PER_CHANNEL = ("weight", "bias", "running_mean", "running_var", "border_kernel", "matrix")


@torch.no_grad()
def copy_channels(model: nn.Module, uses, pairs, names=PER_CHANNEL) -> None:
    """For each (src, dst) root-channel pair, copy src's entries onto dst's in every producer use
    (conv filters, BN entries, shortcut rows): afterwards dst is an exact duplicate of src.
    A use that carries only a part of the group (behind a channel split) and neither channel of a
    pair is left alone for that pair."""
    modules = dict(model.named_modules())
    for use in uses:
        if use.role != "producer":
            continue
        for name in names:
            t = getattr(modules[use.path], name, None)
            if isinstance(t, torch.Tensor):
                for src, dst in pairs:
                    if src in use.index or dst in use.index:
                        t[use.index[dst]] = t[use.index[src]]
