"""Least-squares refit: after a merge, give each layer that reads merged channels the weights that
best reproduce what the uncompressed model computes there, on a few thousand images. No training.

Averaging filters that are not exact duplicates shrinks and shifts what the merged channel carries,
and the error compounds with depth. The consumer's input slices (summed over each cluster) are only
a first guess. With X the consumer's input patches in the merged model and Y its output in the
uncompressed gray model on the same images, the refit solves the ridge regression
    min_W ||X W - (Y - b)||^2 + lam ||W||^2,   lam = ridge * trace(X^T X) / dim
in closed form (ThiNet, Luo et al. ICCV 2017, and Neuron Merging, Kim et al. NeurIPS 2020, for the
idea). The consumer's BatchNorm and everything after it are unchanged: matching the conv's output
before its BN is matching what the BN normalizes. Layers are refit in forward order, each on inputs
produced by the layers already refit, so corrections do not pile up.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.inspect import conv_forward_order

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class RefitReport:
    """Per refit layer: relative output error before and after (on the calibration images)."""

    layers: list[str] = field(default_factory=list)
    error_before: list[float] = field(default_factory=list)
    error_after: list[float] = field(default_factory=list)
    images: int = 0


def changed_consumers(model: nn.Module, reference: nn.Module, size: int = 32) -> list[str]:
    """Convs and linears (groups=1) whose input width differs from the reference's, outputs equal,
    in forward order: the layers that read merged channels and can be refit against the reference."""
    ref = dict(reference.named_modules())
    out = []
    order = conv_forward_order(model, size)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for path in order + linears:
        m, r = model.get_submodule(path), ref.get(path)
        if type(r) is not type(m) and not (isinstance(m, nn.Conv2d) and isinstance(r, nn.Conv2d)):
            continue
        if isinstance(m, nn.Conv2d):
            same_out = m.out_channels == r.out_channels and m.groups == 1 and r.groups == 1
            if same_out and m.in_channels != r.in_channels and m.padding_mode == "zeros":
                out.append(path)
        elif isinstance(m, nn.Linear) and m.out_features == r.out_features and m.in_features != r.in_features:
            out.append(path)
    return out


def _design(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Rows of the regression: (samples, in_features) for a linear, patches (N*L, C*k*k) for a conv."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    pad = module.padding
    if isinstance(pad, str):
        raise ValueError(f"ls-refit: string padding {pad!r} is not supported")
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=pad, stride=module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _targets(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """(rows, outputs) matching `_design`, the bias taken off (it stays as it is)."""
    if module.bias is not None:
        y = y - module.bias.view(1, -1, *([1] * (y.ndim - 2)))
    if isinstance(module, nn.Linear):
        return y.reshape(-1, y.shape[-1])
    return y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])


@torch.no_grad()
def _capture(model: nn.Module, path: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) of `path` on batch x."""
    seen: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen["in"], seen["out"] = inputs[0], output

    handle = model.get_submodule(path).register_forward_hook(hook)
    try:
        model(x)
    finally:
        handle.remove()
    return seen["in"], seen["out"]


@torch.no_grad()
def ls_refit(model: nn.Module, reference: nn.Module, batches: Batches, layers: list[str] | None = None,
             ridge: float = 1e-4, size: int = 32) -> RefitReport:
    """Refit `layers` of `model` in place (default `changed_consumers`) to match `reference`'s outputs.

    `batches` yields (images, labels) the two models take (raw gray for folded models); it is read
    once and kept (a few thousand images). Both models are used in eval mode.
    """
    images = torch.cat([x for x, _ in batches])
    model.eval()
    reference.eval()
    layers = changed_consumers(model, reference, size) if layers is None else list(layers)
    report = RefitReport(images=len(images))
    for path in layers:
        module = model.get_submodule(path)
        w = module.weight
        dim = w[0].numel()
        xtx = torch.zeros(dim, dim, dtype=torch.float64, device=w.device)
        xty = torch.zeros(dim, w.shape[0], dtype=torch.float64, device=w.device)
        yty = torch.zeros((), dtype=torch.float64, device=w.device)
        for chunk in images.split(64):
            x_in, _ = _capture(model, path, chunk)
            _, y_ref = _capture(reference, path, chunk)
            a, b = _design(module, x_in.double()), _targets(module, y_ref.double())
            xtx += a.T @ a
            xty += a.T @ b
            yty += b.pow(2).sum()
        old = w.detach().double().reshape(w.shape[0], -1).T
        lam = (ridge * torch.trace(xtx) / dim).clamp_min(1e-12)  # inputs all zero: still solvable (W = 0)
        new = torch.linalg.solve(xtx + lam * torch.eye(dim, dtype=torch.float64, device=w.device), xty)
        report.layers.append(path)  # relative residual ||XW - Y|| / ||Y||, before and after
        report.error_before.append(_rel_error(xtx, xty, yty, old))
        report.error_after.append(_rel_error(xtx, xty, yty, new))
        w.copy_(new.T.reshape(w.shape).to(w.dtype))
    return report


def _rel_error(xtx: torch.Tensor, xty: torch.Tensor, yty: torch.Tensor, w: torch.Tensor) -> float:
    resid = yty - 2 * (w * xty).sum() + (w * (xtx @ w)).sum()
    return float((resid.clamp_min(0) / yty.clamp_min(1e-30)).sqrt())
