"""Model surgery: merge clusters of a conv layer's channels, and rebuild changed models on load.

    >>> merged = merge_channels(model, "stem", clustering, torch.rand(1, 1, 32, 32))
    >>> save_checkpoint("merged", merged, {**meta, "surgery": True})
"""
from .graph import (ChannelConstraints, ChannelUse, Partition, channel_constraints, conv_paths,
                    trace_channel_group, trace_channel_uses)
from .layers import ChannelMapShortcut, convert_shortcuts
from .merge import cluster_groups, merge_channels
from .reshape import resize_to_state_dict

__all__ = ["ChannelConstraints", "ChannelUse", "Partition", "channel_constraints", "trace_channel_group", "ChannelMapShortcut", "cluster_groups", "conv_paths", "convert_shortcuts",
           "merge_channels", "resize_to_state_dict", "trace_channel_uses"]
