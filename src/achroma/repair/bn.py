"""Repair after folding/merging by the BN layers alone: train their affine parameters, or only
re-estimate their running statistics, or re-estimate them and keep the function (`bn_align`). Every
other weight stays as it is."""
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


@torch.no_grad()
def bn_align(model: nn.Module, loader: Batches, max_batches: int | None = None) -> nn.Module:
    """Every BN's running statistics set to what its input really is on `loader`, its affine changed to
    compensate: the model computes exactly what it did in eval mode, and a training step (batch
    statistics) now starts from that same function.

    After a merge or a refit the running statistics no longer describe the BN's input (averaging
    imperfectly correlated filters shrinks a channel's spread; the refit aims the conv at targets
    expressed through the old statistics), so train mode normalizes by other numbers than eval mode and
    training starts from another, worse model; plain re-estimation (`bn_recalibrate`) changes the
    eval function the same way. Here, per channel, with old (mu, var), new (m, v), s = sqrt(var + eps)
    and s' = sqrt(v + eps): gamma' = gamma s' / s and beta' = beta + gamma (m - mu) / s, so that
    gamma' (z - m) / s' + beta' = gamma (z - mu) / s + beta for every z. One eval pass collects every
    BN's input moments at once (the function does not change, so neither do the inputs); under
    torchrun they are summed over the processes. BNs without affine or running statistics are left
    as they are. In place; returns `model`.
    """
    from ..training.distributed import all_reduce_sum

    layers = [m for m in _batchnorms(model) if m.affine and m.track_running_stats]
    moments = {m: torch.zeros(3, m.num_features, dtype=torch.float64, device=m.running_mean.device)
               for m in layers}  # count, sum, sum of squares per channel

    def collect(m: _BN, inputs: tuple) -> None:
        z = inputs[0].detach().double().transpose(0, 1).reshape(m.num_features, -1)
        moments[m] += torch.stack([torch.full_like(z[:, 0], z.shape[1]), z.sum(1), z.pow(2).sum(1)])

    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_pre_hook(collect) for m in layers]
    device = _device(model)
    try:
        model.eval()
        for x, _ in islice(loader, max_batches):
            model(x.to(device))
    finally:
        for h in handles:
            h.remove()
        for m, flag in modes.items():
            m.training = flag
    for m in layers:
        all_reduce_sum(moments[m])
    if not any(moments[m][0].min() > 0 for m in layers):
        raise ValueError("the calibration loader yielded no batches")
    for m in layers:
        count, total, squares = moments[m]
        if not count.min() > 0:  # a BN the forward pass never reaches keeps what it had
            continue
        mean = total / count
        var = (squares / count - mean.pow(2)).clamp_min(0)
        old_mean, old_std = m.running_mean.double(), (m.running_var.double() + m.eps).sqrt()
        gamma = m.weight.double()
        m.bias.copy_((m.bias.double() + gamma * (mean - old_mean) / old_std).to(m.bias.dtype))
        m.weight.copy_((gamma * (var + m.eps).sqrt() / old_std).to(m.weight.dtype))
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_(var.to(m.running_var.dtype))
    return model
