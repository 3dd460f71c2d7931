"""Find conv layers in any model: by module path, and in forward order (by a stopped dry run).

One definition of "the first conv" for every stage: the first Conv2d the forward pass calls,
not the first one registered (fold, fields, the compress plan and evaluate all use it).
"""
from __future__ import annotations

import torch
import torch.nn as nn


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early, once the wanted layer has been reached."""


def conv_layer_names(model: nn.Module) -> list[str]:
    """Module paths of every Conv2d in `model`, in registration order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def resolve_conv(model: nn.Module, path: str) -> nn.Conv2d:
    """The Conv2d at module path `path`; ValueError naming some valid paths when there is none."""
    try:
        module = model.get_submodule(path)  # a walk down the path, not a dict of every module
    except AttributeError:
        module = None
    if isinstance(module, nn.Conv2d):
        return module
    names = conv_layer_names(model)
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    what = f"is a {type(module).__name__}, not a Conv2d" if module is not None else "is not a module of this model"
    raise ValueError(f"layer {path!r} {what}; conv layers: {shown or 'none'} (or 'first')")


def first_conv_name(model: nn.Module, size: int = 32) -> str:
    """Path of the first Conv2d the forward pass calls (not merely the first one registered).

    Runs the model on a zero image with a pre-hook on every conv that records the first call
    and stops the pass, so no conv (nor anything after it) is computed.
    """
    convs = {m: name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if not convs:
        raise ValueError("model has no Conv2d layer")
    found: list[str] = []

    def hook(module: nn.Module, _inputs: object) -> None:
        found.append(convs[module])
        raise _StopForward

    handles = [m.register_forward_pre_hook(hook) for m in convs]
    guess = next(iter(convs)).in_channels  # only the first conv's check would see a wrong count
    param = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros(1, guess, size, size, dtype=param.dtype, device=param.device))
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    if not found:
        raise ValueError("the forward pass called no Conv2d")
    return found[0]


def conv_forward_order(model: nn.Module, size: int = 32) -> list[str]:
    """Paths of the Conv2d layers in the order a forward pass first calls them (one no-grad pass).

    Convs the pass never calls are left out. The blog's "2nd" or "14th" conv layer means this order.
    """
    convs = {m: name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    order: list[str] = []

    def hook(module: nn.Module, _inputs: object) -> None:
        if convs[module] not in order:
            order.append(convs[module])

    channels = input_channels(model, size)
    handles = [m.register_forward_pre_hook(hook) for m in convs]
    param = next(model.parameters())
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, size, size, dtype=param.dtype, device=param.device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return order


def input_channels(model: nn.Module, size: int = 32) -> int:
    """Channels the model takes: those of the first conv it calls (1 for gray models, 3 for color)."""
    return resolve_conv(model, first_conv_name(model, size)).in_channels


def resolve_layer_name(model: nn.Module, layer: str, size: int = 32) -> str:
    """`layer` itself when it names a Conv2d; 'first' means the first conv in forward order."""
    if layer == "first":
        return first_conv_name(model, size)
    resolve_conv(model, layer)
    return layer
