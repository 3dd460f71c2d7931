"""Who produces and who reads a conv layer's output channels, from Torch-Pruning's dependency graph.

The graph is traced (autograd) from an example input, so no layer names are assumed: concat
(DenseNet), residual addition (ResNet), depthwise convs (MobileNet) and flatten -> Linear are all
mapped to each module's own channel layout. The result is plain data: per module, its role and
which local channel (or flattened feature) carries each channel of the root layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
import torch_pruning as tp

from .layers import ChannelMapShortcut, convert_shortcuts, customized_pruners, dense_shortcuts

Role = Literal["producer", "consumer"]


@dataclass
class ChannelUse:
    """One module's share of a channel group.

    role 'producer': the module computes or normalizes the channels per channel (conv output
    filters, BN entries, depthwise filters, a shortcut's rows): merging averages its entries.
    role 'consumer': the module reads the channels as input slices (conv/linear input columns):
    merging sums the members' slices. index[c] lists the module's local indices that carry root
    channel c along its channel axis (several for a Linear behind a flatten), ascending.
    """

    path: str
    kind: str
    role: Role
    index: dict[int, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "role": self.role,
                "index": {str(k): v for k, v in self.index.items()}}


def conv_paths(model: nn.Module) -> list[str]:
    """Paths (as in named_modules) of every Conv2d in the model, in definition order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def resolve_conv(model: nn.Module, layer_path: str) -> nn.Conv2d:
    """The Conv2d at `layer_path`, or a ValueError that lists the valid paths."""
    module = dict(model.named_modules()).get(layer_path)
    if not isinstance(module, nn.Conv2d):
        what = "no module" if module is None else f"a {type(module).__name__}, not a Conv2d,"
        raise ValueError(f"{what} at layer path {layer_path!r}; conv layers: {', '.join(conv_paths(model))}")
    return module


def build_graph(model: nn.Module, example_input: Any) -> tp.DependencyGraph:
    """Trace `model` (whose option-A shortcuts must already be converted) into a dependency graph.

    Torch-Pruning leaves the traced model in eval mode; the train/eval flags are put back.
    """
    flags = {m: m.training for m in model.modules()}
    try:
        with torch.enable_grad(), dense_shortcuts():
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, customized_pruners=customized_pruners(), verbose=False)
    finally:
        for m, flag in flags.items():
            m.training = flag
    return dg


def _role(dg: tp.DependencyGraph, module: nn.Module, handler, path: str) -> Role | None:
    """Producer/consumer for the modules we know how to merge; None for parameter-free graph ops."""
    if isinstance(module, nn.Parameter):
        raise ValueError(f"channel group reaches a bare nn.Parameter ({path}); merging it is not supported")
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "producer"
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed:
            raise ValueError(f"transposed conv {path!r} in the channel group is not supported")
        if module.groups > 1:
            if module.groups == module.in_channels == module.out_channels:
                return "producer"  # depthwise: channel c in -> channel c out, its filter is per channel
            raise ValueError(f"grouped conv {path!r} (groups={module.groups}) in the channel group is not "
                             "supported: merged channels could sit in different groups")
        return "producer" if dg.is_out_channel_pruning_fn(handler) else "consumer"
    if isinstance(module, (nn.Linear, ChannelMapShortcut)):
        return "producer" if dg.is_out_channel_pruning_fn(handler) else "consumer"
    has_state = any(True for _ in module.parameters(recurse=False)) or any(
        b.is_floating_point() for b in module.buffers(recurse=False))
    if has_state:
        raise ValueError(f"layer {path!r} ({type(module).__name__}) in the channel group holds per-channel "
                         "state that merging does not know how to combine")
    return None


def channel_uses(dg: tp.DependencyGraph, model: nn.Module, conv: nn.Module) -> list[ChannelUse]:
    """Every module touched by `conv`'s output channels, with its role and root -> local index map."""
    pruner = dg.get_pruner_of_module(conv)
    group = dg.get_pruning_group(conv, pruner.prune_out_channels, list(range(conv.out_channels)))
    names = {m: n for n, m in model.named_modules()}
    uses: dict[tuple[int, Role], ChannelUse] = {}
    for item in group:
        module, handler = item.dep.target.module, item.dep.handler
        path = names.get(module, str(module))
        role = _role(dg, module, handler, path)
        if role is None:
            continue
        use = uses.setdefault((id(module), role), ChannelUse(path, type(module).__name__, role))
        for local, root in zip(item.idxs, item.root_idxs):
            slots = use.index.setdefault(int(root), [])
            if int(local) not in slots:
                slots.append(int(local))
    for use in uses.values():
        use.index = {root: sorted(slots) for root, slots in sorted(use.index.items())}
    return list(uses.values())


def trace_channel_uses(model: nn.Module, layer_path: str, example_input: Any) -> list[ChannelUse]:
    """Inspect the channel group of `layer_path` without changing `model` (works on a copy).

    Paths of option-A shortcuts appear as ChannelMapShortcut uses (see `convert_shortcuts`).
    """
    import copy

    work = convert_shortcuts(copy.deepcopy(model))
    conv = resolve_conv(work, layer_path)
    dg = build_graph(work, example_input)
    if conv not in dg.module2node:
        raise ValueError(f"layer {layer_path!r} is not reached by a forward pass of the example input")
    return channel_uses(dg, work, conv)
