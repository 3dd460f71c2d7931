"""Refuse, before any work, a list of layers two of which write the same channels.

Merging a conv merges its whole channel group (every conv, BN and shortcut writing those channels):
on a ResNet, `conv1` and `layer1.0.conv2` both write the stage-1 residual stream. Naming both would
merge the stream twice, the second time with fields computed for channels that no longer exist;
`compress` calls this in its plan, so the error comes before any fields are computed.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch.nn as nn

from .graph import build_graph, channel_uses, resolve_conv
from .layers import convert_shortcuts


def check_disjoint_groups(model: nn.Module, paths: Sequence[str], example_input: Any) -> None:
    """ValueError naming two of `paths` that write the same channel group (one trace of the model).

    Also refuses at once a path that cannot be merged at all for what it is (a conv inside a
    grouped pointwise conv), before any fields are computed for it.
    """
    for path in paths:
        resolve_conv(model, path)
    if len(paths) < 2:
        return
    work = convert_shortcuts(copy.deepcopy(model))
    dg = build_graph(work, example_input)
    owner: dict[str, str] = {}
    for path in paths:
        conv = resolve_conv(work, path)
        if conv not in dg.module2node:
            raise ValueError(f"layer {path!r} is not reached by a forward pass of the example input")
        writers = [u.path for u in channel_uses(dg, work, conv)
                   if u.role == "producer" and isinstance(work.get_submodule(u.path), nn.Conv2d)]
        for writer in writers:
            if writer in owner and owner[writer] != path:
                raise ValueError(f"layers {owner[writer]} and {path} write the same channels (one channel group, "
                                 f"written by {', '.join(writers[:6])}{', ...' if len(writers) > 6 else ''}): "
                                 "merging one merges the other; name only one of them")
            owner[writer] = path
