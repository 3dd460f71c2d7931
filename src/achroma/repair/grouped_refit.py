"""Least-squares refit of grouped pointwise convs made from dense ones (`achroma group`), no training.

The transform starts each group from the dense weight's block diagonal, which keeps only the
weight inside the blocks (a fifth to a half of a trained DenseNet's squared weight) and drops the
rest. A 1x1 conv is a per-pixel linear map, so each group has a closed-form best start instead: with
X the grouped model's input to the layer and Y the dense model's output there (bias taken off),
group g solves the ridge regression of Y[:, outputs_g] on X[:, inputs_g], the same problem and
ridge as `ls_refit` for merges. Layers are refit in forward order, each on inputs produced by the
layers already refit.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from ..grouping.module import PermutedGroupedConv
from .refit import RefitReport, _capture, _rel_error

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def grouped_forward_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Paths of the model's `PermutedGroupedConv`s in the order the forward pass calls them."""
    order: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _x, path=path: order.append(path))
               for path, m in model.named_modules() if isinstance(m, PermutedGroupedConv)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(order))


def ls_refit_grouped(model: nn.Module, reference: nn.Module, batches: Batches, ridge: float = 1e-4) -> RefitReport:
    """Refit every `PermutedGroupedConv` of `model` in place to match the dense `reference` (the model
    the transform started from: same paths, a dense 1x1 conv at each). Both are used in eval mode;
    `batches` yields (images, labels) in the models' input form and is read once."""
    if ridge == "auto":
        raise ValueError("ridge='auto' is chosen per layer by the merge's ls-refit only; the grouped refit "
                         "takes a number (e.g. 1e-4)")
    images = torch.cat([x for x, _ in batches])
    model.eval()
    reference.eval()
    report = RefitReport(images=len(images))
    for path in grouped_forward_order(model, images[:1]):
        _refit(model, reference, path, images, ridge, report)
    return report


@torch.no_grad()
def _refit(model: nn.Module, reference: nn.Module, path: str, images: torch.Tensor, ridge: float,
           report: RefitReport) -> None:
    layer = model.get_submodule(path)
    dense = reference.get_submodule(path)
    if not isinstance(dense, nn.Conv2d) or dense.weight.shape[:2] != (layer.out_channels, layer.in_channels):
        raise ValueError(f"{path}: the reference has no dense {layer.in_channels} -> {layer.out_channels} 1x1 conv")
    c_in, c_out = layer.in_channels, layer.out_channels
    dev = layer.conv.convs[0].weight.device
    xtx = torch.zeros(c_in, c_in, dtype=torch.float64, device=dev)
    xty = torch.zeros(c_in, c_out, dtype=torch.float64, device=dev)
    yty = torch.zeros((), dtype=torch.float64, device=dev)
    bias = layer.conv.dense_bias()
    if bias is not None and layer.out_inv is not None:
        bias = bias.index_select(0, layer.out_inv)
    for chunk in images.split(64):
        x_in, _ = _capture(model, path, chunk)
        _, y_ref = _capture(reference, path, chunk)
        x = x_in[:, :, ::layer.stride, ::layer.stride].double()
        y = y_ref.double() - (0 if bias is None else bias.double().view(1, -1, 1, 1))
        a = x.permute(0, 2, 3, 1).reshape(-1, c_in)
        b = y.permute(0, 2, 3, 1).reshape(-1, c_out)
        xtx += a.T @ a
        xty += a.T @ b
        yty += b.pow(2).sum()
    old = layer.dense_weight().double().T  # (in, out), zero across groups
    new = torch.zeros_like(old)
    for ins, outs in layer.group_channels():
        i, o = torch.tensor(ins, device=dev), torch.tensor(outs, device=dev)
        g_xtx = xtx.index_select(0, i).index_select(1, i)
        lam = (ridge * torch.trace(g_xtx) / len(ins)).clamp_min(1e-12)
        eye = torch.eye(len(ins), dtype=torch.float64, device=dev)
        block = torch.linalg.solve(g_xtx + lam * eye, xty.index_select(0, i).index_select(1, o))
        new[i.view(-1, 1), o.view(1, -1)] = block
    report.layers.append(path)
    report.error_before.append(_rel_error(xtx, xty, yty, old))
    report.error_after.append(_rel_error(xtx, xty, yty, new))
    layer.load_dense(new.T.to(layer.conv.convs[0].weight.dtype))
