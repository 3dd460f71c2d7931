"""Rebuild a freshly created model so its layers have the shapes found in a (surgered) state dict.

A merged or folded model differs from `create_model(**arch)` only in layer widths, bias presence,
the folded first conv's border kernel and option-A shortcuts turned into channel maps. All of that
can be read off the state dict, so one generic pass makes `load_checkpoint` work for any of them.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from ..fold.border import BorderCorrectedConv2d
from ..models.resnet_cifar import PadShortcut
from ..models.timm_models import drop_folded_layer_scales
from .layers import ChannelMapShortcut, ChannelShuffle, ShuffleBlock, ShuffleNetBlock


def _conv_like(old: nn.Conv2d, state: Mapping[str, torch.Tensor], prefix: str) -> nn.Conv2d | None:
    weight = state.get(prefix + "weight")
    if weight is None:
        return None
    has_bias = prefix + "bias" in state
    has_border = prefix + "border_kernel" in state
    out_ch, per_group = int(weight.shape[0]), int(weight.shape[1])
    if old.groups == 1:
        groups = 1
    elif old.groups == old.in_channels:  # keep the channel multiplier: depthwise stays depthwise with fewer channels
        groups = out_ch // (old.out_channels // old.groups)
    else:  # a grouped conv keeps its number of groups; merging removes channels from every group equally
        groups = old.groups
    same = (tuple(weight.shape) == tuple(old.weight.shape) and has_bias == (old.bias is not None)
            and has_border == isinstance(old, BorderCorrectedConv2d) and groups == old.groups)
    if same:
        return None
    cls = BorderCorrectedConv2d if has_border else (nn.Conv2d if isinstance(old, BorderCorrectedConv2d) else type(old))
    return cls(per_group * groups, out_ch, old.kernel_size, stride=old.stride, padding=old.padding,
               dilation=old.dilation, groups=groups, bias=has_bias, padding_mode=old.padding_mode,
               device=old.weight.device, dtype=old.weight.dtype)


def _batchnorm_like(old: nn.modules.batchnorm._BatchNorm, state: Mapping[str, torch.Tensor], prefix: str):
    ref = state.get(prefix + "weight", state.get(prefix + "running_mean"))
    if ref is None or int(ref.shape[0]) == old.num_features:
        return None
    like = old.weight if old.weight is not None else old.running_mean
    return type(old)(int(ref.shape[0]), eps=old.eps, momentum=old.momentum, affine=old.affine,
                     track_running_stats=old.track_running_stats, device=like.device, dtype=like.dtype)


def _linear_like(old: nn.Linear, state: Mapping[str, torch.Tensor], prefix: str) -> nn.Linear | None:
    weight = state.get(prefix + "weight")
    has_bias = prefix + "bias" in state
    if weight is None or (tuple(weight.shape) == tuple(old.weight.shape) and has_bias == (old.bias is not None)):
        return None
    return type(old)(int(weight.shape[1]), int(weight.shape[0]), bias=has_bias,
                     device=old.weight.device, dtype=old.weight.dtype)


@torch.no_grad()
def _resize_layernorm(norm: nn.LayerNorm, state: Mapping[str, torch.Tensor], prefix: str) -> None:
    """In place (keeps the class: timm's LayerNorm2d normalizes channels first): a LayerNorm over a channel
    group merged with `layernorm='merge'` normalizes fewer channels."""
    weight = state.get(prefix + "weight")
    if weight is None or norm.weight is None or len(norm.normalized_shape) != 1 or weight.shape == norm.weight.shape:
        return
    n = int(weight.shape[0])
    norm.normalized_shape = (n,)
    norm.weight = nn.Parameter(norm.weight.new_empty(n))
    if norm.bias is not None:
        norm.bias = nn.Parameter(norm.bias.new_empty(n))


def _shortcut_like(old: nn.Module, state: Mapping[str, torch.Tensor], prefix: str) -> ChannelMapShortcut | None:
    matrix = state.get(prefix + "matrix")
    if matrix is None or (isinstance(old, ChannelMapShortcut) and old.matrix.shape == matrix.shape):
        return None
    return ChannelMapShortcut(torch.zeros(tuple(matrix.shape), dtype=matrix.dtype), old.stride)


def resize_to_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Replace (in place) conv, BN, linear and shortcut layers whose shapes differ from `state`.

    Weights of rebuilt layers are left uninitialized-ish (fresh init): load `state` afterwards.
    Returns `model`. Layers of other types are left alone (a strict load then reports them).
    """
    for path, block in list(model.named_modules()):  # ShuffleNet blocks whose shuffle routes a merged channel
        prefix = f"{path}.shuffle." if path else "shuffle."
        if type(block) in (ShuffleNetBlock, ShuffleBlock) and prefix + "matrix" in state:
            matrix = state[prefix + "matrix"]
            block.__class__ = ShuffleBlock
            block.shuffle = ChannelShuffle(torch.zeros(tuple(matrix.shape), dtype=matrix.dtype))
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            prefix = f"{parent_name}.{name}." if parent_name else f"{name}."
            new: nn.Module | None = None
            if isinstance(child, nn.Conv2d):
                new = _conv_like(child, state, prefix)
            elif isinstance(child, nn.modules.batchnorm._BatchNorm):
                new = _batchnorm_like(child, state, prefix)
            elif isinstance(child, nn.Linear):
                new = _linear_like(child, state, prefix)
            elif isinstance(child, nn.LayerNorm):
                _resize_layernorm(child, state, prefix)
            elif isinstance(child, (PadShortcut, ChannelMapShortcut)) and not isinstance(child, ChannelShuffle):
                new = _shortcut_like(child, state, prefix)
            if new is not None:
                new.train(child.training)
                setattr(parent, name, new)
    drop_folded_layer_scales(model, state)
    return model
