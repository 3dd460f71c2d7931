"""Repair after folding/merging by the BN layers alone: train their affine parameters, or only
re-estimate their running statistics. Every other weight stays as it is."""
from __future__ import annotations

from itertools import islice
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
_BN = nn.modules.batchnorm._BatchNorm


def _batchnorms(model: nn.Module) -> list[_BN]:
    layers = [m for m in model.modules() if isinstance(m, _BN)]
    if not layers:
        raise ValueError("the model has no BatchNorm layers to repair")
    return layers


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def bn_train(
    model: nn.Module,
    loader: Batches,
    epochs: int = 1,
    lr: float = 0.01,
    momentum: float = 0.7,
    max_batches: int | None = None,
) -> nn.Module:
    """The notebook's repair: SGD on the BN affine parameters only (cross-entropy), in train mode.

    BN running statistics update as in any training pass (Keras does the same); all other
    parameters are frozen. Trains `model` in place and returns it; requires_grad flags and the
    train/eval mode are restored afterwards. `loader` yields (inputs, labels) batches. Under torchrun
    (a process group joined) the model trains data-parallel (DDP): give each process its share.
    """
    from ..training.distributed import current, wrap_model

    layers = _batchnorms(model)
    params = [p for m in layers for p in (m.weight, m.bias) if p is not None]
    if not params:
        raise ValueError("the model's BatchNorm layers have no affine parameters (affine=False)")
    trainable = {id(p) for p in params}
    grad_flags = {p: p.requires_grad for p in model.parameters()}
    modes = {m: m.training for m in model.modules()}
    device = _device(model)
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum)
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
        model.train()
        net = wrap_model(model, current(), device)  # after the flags: DDP syncs the BN affines only
        for _ in range(epochs):
            for x, y in islice(loader, max_batches):
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(net(x.to(device)).float(), y.to(device))
                loss.backward()
                optimizer.step()
    finally:
        for p, flag in grad_flags.items():
            p.requires_grad_(flag)
            p.grad = None
        for m, flag in modes.items():
            m.training = flag
    return model


@torch.no_grad()
def bn_recalibrate(model: nn.Module, loader: Batches, max_batches: int | None = None) -> nn.Module:
    """Re-estimate every BN layer's running mean/var on `loader`, with no gradient step.

    Statistics are reset and accumulated as a plain average over the batches (momentum=None);
    only the BN layers run in train mode (dropout stays off). In place; returns `model`. Under
    torchrun each process averages its own batches and the averages are then averaged over the
    processes, weighted by their batch counts.
    """
    from ..training.distributed import all_reduce_sum, current

    layers = [m for m in _batchnorms(model) if m.track_running_stats]
    modes = {m: m.training for m in model.modules()}
    saved = {m: (m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in layers}
    device = _device(model)
    seen = 0
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for x, _ in islice(loader, max_batches):
            model(x.to(device))
            seen += 1
    finally:
        for m, (mom, mean, var, count) in saved.items():
            m.momentum = mom
            if seen == 0:  # nothing to estimate from: keep what we had
                m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(count)
        for m, flag in modes.items():
            m.training = flag
    if current().world_size > 1:  # every process must take part, so before the error below
        count = torch.tensor([float(seen)], dtype=torch.float64)
        all_reduce_sum(count)
        for m in layers:
            for buf in (m.running_mean, m.running_var):
                total = buf.double() * seen
                all_reduce_sum(total)
                buf.copy_((total / count.clamp_min(1).to(total.device)).to(buf.dtype))
    if seen == 0:
        raise ValueError("the calibration loader yielded no batches")
    return model
