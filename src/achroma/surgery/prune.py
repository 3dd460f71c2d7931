"""Prune a channel group: keep some of a conv's output channels and remove the others everywhere.

The merge's counterpart with no fold: nothing is averaged or summed, the removed channels just
disappear from every module that produces or reads them (the same Torch-Pruning group removal
`merge_channels` does after its fold). Grouped convs and channel splits are respected: each
removed channel is attached to a kept channel of its own block, so the merge's checks (equal
removals per block) apply unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from .graph import channel_constraints, resolve_conv
from .groups import merge_channels

if TYPE_CHECKING:
    from ..clustering import Clustering


def check_keep(keep: Sequence[int], n_channels: int) -> list[int]:
    """`keep` as a sorted list of distinct channel indices in [0, n_channels); ValueError otherwise."""
    out = sorted(int(k) for k in keep)
    if not out:
        raise ValueError("keep is empty: at least one channel must stay")
    if len(set(out)) != len(out):
        raise ValueError(f"keep lists a channel twice: {out}")
    if out[0] < 0 or out[-1] >= n_channels:
        raise ValueError(f"keep must index the layer's {n_channels} channels; got {out}")
    return out


def pruning_clustering(keep: Sequence[int], n_channels: int, blocks: Sequence[Sequence[int]] | None = None,
                       layer: str | None = None) -> Clustering:
    """Kept channels as the representatives; each removed channel joins the first kept channel of its block.

    `blocks` (ChannelConstraints.blocks(); default one block) say which channels may share a
    cluster. Merging this clustering with fold=False is pruning. ValueError when a block that
    loses channels keeps none.
    """
    from ..clustering import Clustering

    keep = check_keep(keep, n_channels)
    kept = set(keep)
    label_of = {c: i for i, c in enumerate(keep)}
    labels = np.empty(n_channels, dtype=np.int64)
    for block in blocks or [range(n_channels)]:
        anchors = [c for c in block if c in kept]
        for c in block:
            if c in kept:
                labels[c] = label_of[c]
            elif not anchors:
                raise ValueError(f"a block of channels {list(block)} keeps none of its channels; prune within "
                                 "each block (a grouped conv or a channel split needs every block non-empty)")
            else:
                labels[c] = label_of[anchors[0]]
    return Clustering(labels, keep, len(keep), "prune", {"kept": keep}, layer)


def prune_channels(model: nn.Module, layer_path: str, keep: Sequence[int], example_input: Any) -> nn.Module:
    """A new model in which `layer_path`'s channel group keeps only the channels `keep` (no folding).

    Every producer and consumer of the group loses the other channels (a residual stream shrinks
    in every conv, BN and shortcut that writes or reads it). `example_input` is a batch the model
    accepts, for tracing. The input model is not modified.
    """
    n = resolve_conv(model, layer_path).out_channels
    keep = check_keep(keep, n)
    if len(keep) == n:
        return merge_channels(model, layer_path, np.arange(n), example_input, fold=False)
    constraints = channel_constraints(model, layer_path, example_input)
    clustering = pruning_clustering(keep, n, None if constraints.free else constraints.blocks(), layer_path)
    return merge_channels(model, layer_path, clustering, example_input, fold=False)
