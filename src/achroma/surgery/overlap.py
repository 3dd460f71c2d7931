"""Refuse, before any work, a list of layers two of which write the same channels.

Merging a conv merges its whole channel group (every conv, BN and shortcut writing those channels):
on a ResNet, `conv1` and `layer1.0.conv2` both write the stage-1 residual stream. Naming both would
merge the stream twice, the second time with fields computed for channels that no longer exist;
`compress` calls this in its plan, so the error comes before any fields are computed. Groups are
compared channel by channel (`ChannelGraph.check_disjoint`): a ShuffleNet v1 stem and the branch
of the unit after it write different positions of one concatenated stream, and may both be named.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch.nn as nn

from .graph import resolve_conv


def check_disjoint_groups(model: nn.Module, paths: Sequence[str], example_input: Any) -> None:
    """ValueError naming two of `paths` that write the same channel (one trace of the model).

    Also refuses at once a path that cannot be merged at all for what it is (a conv inside a
    grouped pointwise conv), before any fields are computed for it.
    """
    from .groups import ChannelGraph

    for path in paths:
        resolve_conv(model, path)
    if len(paths) < 2:
        return
    ChannelGraph(model, example_input).check_disjoint(paths)
