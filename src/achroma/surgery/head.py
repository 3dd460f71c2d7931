"""A new task's head: find the classifier in the forward pass and replace it with a fresh one.

The classifier is found by running the model, not by its name: the last `nn.Linear` (or `nn.Conv2d`,
as in the seed DenseNet's 2x2 conv head) called whose output, flattened, is the model's output
(ResNet's `fc`, torchvision's `classifier[1]`, the seed's `classifier` conv alike). Everything
else keeps its trained weights, bit for bit.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..models.inspect import input_channels


@torch.no_grad()
def find_classifier(model: nn.Module, size: int = 32) -> str:
    """Path of the Linear or Conv2d whose flattened output is the model's output (ValueError if none)."""
    calls: list[tuple[str, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: calls.append((name, out)))
             for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    was_training = model.training
    try:
        model.eval()
        p = next(model.parameters())
        x = torch.rand(2, input_channels(model, size), size, size, generator=torch.Generator().manual_seed(0))
        out = model(x.to(p.device, p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for name, value in reversed(calls):
        flat = value.flatten(1)
        if isinstance(out, torch.Tensor) and flat.shape == out.shape and torch.equal(flat, out):
            return name
    raise ValueError("no Linear or Conv2d layer produces the model's output (pooled after the classifier, or a "
                     "softmax?): cannot replace the head of this model")


def replace_classifier(model: nn.Module, num_classes: int, size: int = 32, seed: int = 0) -> str:
    """Replace the classifier of `model` (in place) by a fresh one with `num_classes` outputs.

    The new layer has the old one's kind, input width, kernel, device and dtype, and PyTorch's default
    initialization drawn from `seed`. The recorded architecture (`achroma_arch`) gets the new class
    count, so a checkpoint rebuilds the right head. Returns the classifier's path.
    """
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    path = find_classifier(model, size)
    old = model.get_submodule(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(old, nn.Linear):
            new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        else:
            new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding, old.dilation,
                            bias=old.bias is not None)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and leaf.isdigit():
        parent[int(leaf)] = new
    else:
        setattr(parent, leaf, new)
    arch = getattr(model, "achroma_arch", None)
    if arch is not None:
        model.achroma_arch = {**arch, "num_classes": num_classes}
    return path
