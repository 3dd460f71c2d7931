"""Model surgery: merge clusters of a conv layer's channels, and rebuild changed models on load.

    >>> merged = merge_channels(model, "stem", clustering, torch.rand(1, 1, 32, 32))
    >>> save_checkpoint("merged", merged, {**meta, "surgery": True})
"""
from .graph import ChannelUse, conv_paths, trace_channel_uses
from .layers import ChannelMapShortcut, convert_shortcuts
from .merge import cluster_groups, merge_channels
from .overlap import check_disjoint_groups
from .reshape import resize_to_state_dict

__all__ = ["ChannelUse", "ChannelMapShortcut", "check_disjoint_groups", "cluster_groups", "conv_paths", "convert_shortcuts",
           "merge_channels", "resize_to_state_dict", "trace_channel_uses"]
