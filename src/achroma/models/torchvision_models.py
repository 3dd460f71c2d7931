"""Any torchvision classification model, with the input channels and classes changed to fit."""
from __future__ import annotations

import torch.nn as nn


def create_torchvision_model(name: str, in_chans: int = 3, num_classes: int = 10, **kwargs) -> nn.Module:
    """`torchvision.models.get_model(name, num_classes=...)` (random init), first conv set to `in_chans`."""
    import torchvision.models as tvm

    if name not in tvm.list_models(module=tvm):
        raise ValueError(f"unknown torchvision classification model {name!r}")
    model = tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3:
        _replace_first_conv(model, in_chans)
    return model


def _replace_first_conv(model: nn.Module, in_chans: int) -> None:
    """Swap the first Conv2d (in forward-definition order) for one taking `in_chans` channels."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                new = nn.Conv2d(
                    in_chans, child.out_channels, child.kernel_size, child.stride, child.padding,
                    child.dilation, child.groups if child.groups == 1 else in_chans, child.bias is not None,
                )
                setattr(parent, child_name, new)
                return
    raise ValueError("model has no Conv2d to adapt to the requested input channels")
