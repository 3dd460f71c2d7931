"""The PyTorch deploy form: BatchNorm folded into the conv before it, channels_last, exportable.

Which pairs fuse is read from the model's own graph (torch.fx): a conv whose output goes to a
BatchNorm and nowhere else. Plain `nn.Conv2d` pairs are fused by PyTorch's own
`torch.nn.utils.fusion.fuse_conv_bn_eval`; the fold's `BorderCorrectedConv2d` is fused with
`fuse_conv_bn_weights` for its weight and bias, and its border kernel is scaled by the same
per-channel factor (BN is affine per channel, so BN(conv(x) + map) = a * conv(x) + a * map + c
exactly). Modules without children (and the border conv) are leaves of the trace, so custom layers
with data-dependent Python (channel maps, padded shortcuts) stay opaque and are kept as they are;
a pre-activation BN (BN -> ReLU -> conv, the DenseNets) has no conv before it and stays a BN.

The deploy form runs in channels_last: its weights are stored so and its first op converts the
input. It holds no achroma classes after `torch.export`: save it with `torch.export.save(
export_deploy(model, shape), path)` and load it anywhere with `torch.export.load(path).module()`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights

from ..fold.border import BorderCorrectedConv2d

_BN = (nn.BatchNorm2d,)


class _LeafTracer(fx.Tracer):
    """torch.nn modules and every module without children are leaves; containers are traced through."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (super().is_leaf_module(m, qualname) or isinstance(m, BorderCorrectedConv2d)
                or not any(True for _ in m.children()))


@dataclass
class FuseReport:
    """Which conv -> BN pairs were fused and which BNs remain (with why)."""

    fused: list[tuple[str, str]] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return f"{len(self.fused)} conv+BN pair(s) fused, {len(self.kept)} BatchNorm(s) kept"


def trace(model: nn.Module) -> fx.GraphModule:
    """The model's graph (torch.fx), leaves as in `_LeafTracer`; ValueError in one line when it cannot be traced."""
    tracer = _LeafTracer()
    try:
        graph = tracer.trace(model)
    except Exception as err:  # fx raises TraceError, TypeError, RuntimeError...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot trace the model with torch.fx to find its conv -> BN pairs: {first}") from err
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    for attr in ("achroma_arch", "achroma_surgery"):
        if hasattr(model, attr):
            setattr(gm, attr, getattr(model, attr))
    return gm


def _fuse_border(conv: BorderCorrectedConv2d, bn: nn.BatchNorm2d) -> BorderCorrectedConv2d:
    fused = copy.deepcopy(conv)
    weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                        bn.weight, bn.bias)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
    scale = gamma * torch.rsqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        fused.weight = weight
        fused.bias = bias
        fused.border_kernel.copy_(conv.border_kernel * scale.to(conv.border_kernel.dtype).view(-1, 1, 1, 1))
    fused._bias_maps = {}
    return fused


def _set(gm: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


@torch.no_grad()
def fuse_conv_bn(model: nn.Module) -> tuple[fx.GraphModule, FuseReport]:
    """(fused copy as an fx.GraphModule, report): every conv -> BN pair of the model's graph folded into the conv.

    The model is copied and put in eval mode (BN folds its running statistics); the input model is
    not modified. ValueError when the graph cannot be traced.
    """
    net = copy.deepcopy(model).eval()
    gm = trace(net)
    modules = dict(gm.named_modules())
    report = FuseReport()
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BN):
            continue
        bn = modules[node.target]
        src = node.args[0] if node.args else None
        conv = modules.get(src.target) if isinstance(src, fx.Node) and src.op == "call_module" else None
        if not isinstance(conv, nn.Conv2d):
            report.kept[node.target] = "not after a conv"
            continue
        if len(src.users) > 1:
            report.kept[node.target] = f"{src.target}'s output is also used elsewhere"
            continue
        if not bn.track_running_stats or bn.running_mean is None:
            report.kept[node.target] = "no running statistics"
            continue
        if isinstance(conv, BorderCorrectedConv2d):
            fused = _fuse_border(conv, bn)
        elif type(conv) is nn.Conv2d:
            fused = fuse_conv_bn_eval(conv, bn)
        else:
            report.kept[node.target] = f"{src.target} is a {type(conv).__name__}"
            continue
        _set(gm, src.target, fused)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        report.fused.append((src.target, node.target))
    for _, bn_name in report.fused:
        _set(gm, bn_name, nn.Identity())  # the BN's module is no longer called; drop its tensors
    gm.graph.lint()
    gm.recompile()
    return gm, report


class DeployModel(nn.Module):
    """A fused network run in channels_last: converts its input, then calls the network."""

    def __init__(self, net: nn.Module, channels_last: bool = True):
        super().__init__()
        self.net = net
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)


@torch.no_grad()
def deploy_form(model: nn.Module, channels_last: bool = True) -> tuple[DeployModel, FuseReport]:
    """(deploy model, report): eval, conv+BN fused (`fuse_conv_bn`), float32 CPU, channels_last weights and input."""
    gm, report = fuse_conv_bn(copy.deepcopy(model).float().cpu())
    if channels_last:
        gm = gm.to(memory_format=torch.channels_last)
    return DeployModel(gm, channels_last).eval(), report


def export_deploy(model: nn.Module, input_shape: tuple[int, int, int], channels_last: bool = True,
                  dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """The deploy form as a `torch.export` program, batch dynamic: `torch.export.save` it, then anyone
    loads it with `torch.export.load(path).module()` without achroma or the model's class."""
    net, _ = deploy_form(model, channels_last)
    example = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # plans the border map for this size (export reads it as a constant)
        net(example)
    dynamic = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    return torch.export.export(net, (example,), dynamic_shapes=dynamic)


__all__ = ["DeployModel", "FuseReport", "deploy_form", "export_deploy", "fuse_conv_bn", "trace"]
