"""Model surgery: merge clusters of a conv layer's channels, and rebuild changed models on load.

    >>> merged = merge_channels(model, "stem", clustering, torch.rand(1, 1, 32, 32))
    >>> save_checkpoint("merged", merged, {**meta, "surgery": True})

`prune_channels(model, layer, keep, x)` removes the other channels with no fold (pruning).
Layers whose channels reach a grouped conv or a channel split merge only clusterings that
`channel_constraints(model, layer, x)` allows (`.blocks()`, equal removals per block).
"""
from .graph import (ChannelConstraints, ChannelUse, Partition, channel_constraints, conv_paths,
                    trace_channel_group, trace_channel_uses)
from .head import find_classifier, replace_classifier
from .layers import ChannelMapShortcut, ChannelShuffle, convert_shortcuts, convert_shuffles
from .groups import merge_channels
from .merge import cluster_groups
from .overlap import check_disjoint_groups
from .prune import prune_channels, pruning_clustering
from .reinit import reinitialize
from .reshape import resize_to_state_dict

__all__ = ["ChannelConstraints", "ChannelMapShortcut", "ChannelShuffle", "ChannelUse", "Partition",
           "channel_constraints", "check_disjoint_groups", "cluster_groups", "conv_paths", "convert_shortcuts",
           "convert_shuffles", "find_classifier", "merge_channels", "prune_channels", "pruning_clustering", "reinitialize", "replace_classifier", "resize_to_state_dict",
           "trace_channel_group", "trace_channel_uses"]
