"""Small composable layers (timm style: each takes `device` and `dtype`).

`grouped`: grouped pointwise convolutions with interleaving, the kDenseNet / kEffNet seed
(`GroupedPointwiseConv`, `GroupedPointwiseBlock`, the group-count rules and closed-form parameter
counts); `interleave`: the channel interleaving between successive grouped convs, as a permutation.
"""
from .grouped import (
    RULES,
    GroupedPointwiseBlock,
    GroupedPointwiseConv,
    block_plans,
    count_parameters,
    get_act_layer,
    group_count,
    grouped_conv_params,
    grouped_pointwise_block_params,
    grouped_pointwise_factory,
    mixes,
    pointwise_params,
    seed_group_count,
    split_sizes,
    uneven_group_count,
)
from .interleave import (
    ChannelInterleave,
    interleave_permutation,
    interleave_permutation_from_step,
    inverse_permutation,
    step_sizes,
)

__all__ = [
    "RULES", "GroupedPointwiseBlock", "GroupedPointwiseConv", "block_plans", "count_parameters", "get_act_layer",
    "group_count", "grouped_conv_params", "grouped_pointwise_block_params", "grouped_pointwise_factory", "mixes",
    "pointwise_params", "seed_group_count", "split_sizes", "uneven_group_count", "ChannelInterleave",
    "interleave_permutation", "interleave_permutation_from_step", "inverse_permutation", "step_sizes",
]
