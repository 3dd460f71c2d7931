"""Receptive fields of conv filters by gradient ascent in input space (pipeline step 2).

    >>> from achroma.fields import compute_receptive_fields
    >>> rf = compute_receptive_fields(model, "first", normalization="cifar")
    >>> rf.gray.shape        # (N, 32, 32): what distances and clustering take
    >>> rf.save("fields.npz")
"""
from __future__ import annotations

from .ascent import compute_receptive_fields, initial_images
from ..models.inspect import (
    conv_forward_order,
    conv_layer_names,
    first_conv_name,
    input_channels,
    resolve_conv,
    resolve_layer_name,
)
from .result import LUMA, ReceptiveFields, color_and_gray, deprocess

__all__ = [
    "compute_receptive_fields",
    "initial_images",
    "ReceptiveFields",
    "deprocess",
    "color_and_gray",
    "LUMA",
    "conv_layer_names",
    "conv_forward_order",
    "first_conv_name",
    "input_channels",
    "resolve_conv",
    "resolve_layer_name",
]
