"""The grouped pointwise transform for trained models (issue 10): dense 1x1 convs become grouped ones.

Stages, each usable alone: `find` (the dense 1x1 convs a forward pass calls), `order` (which
channels share a group: the order keeping the most squared weight, or the naive one), `plan`
(plain data per layer), `module` (`PermutedGroupedConv`: gather, grouped conv, scatter, so the rest
of the network is untouched), `transform` (plan, apply, rebuild from a checkpoint), `report`
(per-layer and total parameters and MACs, kept energies).

    >>> from achroma.grouping import plan_grouping, apply_grouping
    >>> grouped = apply_grouping(model, plan_grouping(model, min_channels=16))
"""
from .find import PointwiseConv, find_pointwise_convs, is_dense_pointwise
from .module import PermutedGroupedConv
from .order import ORDERS, ChannelOrder, channel_order, energy_matrix, energy_order, kept_energy, naive_order
from .plan import LayerPlan
from .report import build_group_report, count_params, render_group_markdown
from .transform import ATTR, META_KEY, apply_grouping, grouping_meta, plan_grouping, rebuild_grouping

__all__ = ["ATTR", "META_KEY", "ORDERS", "ChannelOrder", "LayerPlan", "PermutedGroupedConv", "PointwiseConv",
           "apply_grouping", "build_group_report", "channel_order", "count_params", "energy_matrix", "energy_order", "find_pointwise_convs",
           "grouping_meta", "is_dense_pointwise", "kept_energy", "naive_order", "plan_grouping",
           "rebuild_grouping", "render_group_markdown"]
