"""Any timm model by name (`timm:<name>`), random init; its weights come from `--weights` only.

timm is optional (`pip install achroma[timm]`). Nothing is downloaded: `pretrained=False` always,
so a timm checkpoint (its `.pth` / `.safetensors` state dict) is loaded by `load_weights` like any
foreign file. The input normalization a timm model expects is its `pretrained_cfg` mean/std
(`timm_normalization`), so that `achroma compress --model timm:NAME` needs no --normalize.
"""
from __future__ import annotations

import torch
import torch.nn as nn

PREFIX = "timm:"


def _timm():
    try:
        import timm
    except ImportError:
        raise ImportError("timm models need the timm package: install achroma[timm] (pip install 'timm>=1.0')") from None
    return timm


def create_timm_model(name: str, in_chans: int = 3, num_classes: int = 10, **kwargs) -> nn.Module:
    """`timm.create_model(name, pretrained=False, num_classes=..., in_chans=...)`."""
    timm = _timm()
    if kwargs.pop("pretrained", False):
        raise ValueError("timm:... models are never downloaded; give their weights with --weights FILE")
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} (timm {timm.__version__}; see timm.list_models())")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


def timm_normalization(model: nn.Module) -> dict | None:
    """The mean/std of a timm model's `pretrained_cfg` (what its weights were trained on), or None.

    A model built with one input channel keeps timm's 3-channel statistics; the caller reduces
    them to gray (`Normalization.for_channels`)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if not mean or not std or len(mean) != len(std):
        return None
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


@torch.no_grad()
def fold_layer_scales(model: nn.Module) -> list[str]:
    """In place and exact: each timm ConvNeXt block's layer scale (`x * gamma` right after `mlp.fc2`) is
    folded into fc2's rows, and `gamma` becomes None. Returns the blocks changed.

    The scale is a bare parameter on the block's output channels, which a merge cannot follow; folded
    into the layer that writes those channels, it merges with it. Models without timm blocks: [].
    """
    try:
        from timm.models.convnext import ConvNeXtBlock
    except ImportError:
        return []
    done = []
    for path, block in model.named_modules():
        if not isinstance(block, ConvNeXtBlock) or block.gamma is None:
            continue
        fc2 = block.mlp.fc2
        gamma = block.gamma.detach()
        fc2.weight.mul_(gamma.view(-1, *[1] * (fc2.weight.ndim - 1)).to(fc2.weight.dtype))
        if fc2.bias is not None:
            fc2.bias.mul_(gamma.to(fc2.bias.dtype))
        block.gamma = None
        done.append(path)
    return done


def drop_folded_layer_scales(model: nn.Module, state) -> list[str]:
    """On load: the timm ConvNeXt blocks of a fresh `model` whose layer scale `state` lacks (folded by
    `fold_layer_scales` before a merge) lose theirs too, so that the state loads strictly."""
    try:
        from timm.models.convnext import ConvNeXtBlock
    except ImportError:
        return []
    done = []
    for path, block in model.named_modules():
        prefix = f"{path}." if path else ""
        if isinstance(block, ConvNeXtBlock) and block.gamma is not None and prefix + "gamma" not in state \
                and prefix + "mlp.fc2.weight" in state:
            block.gamma = None
            done.append(path)
    return done
