"""What the ascent climbs: one filter's map, read at a point ('conv', 'bn', 'act'), reduced to a number.

point 'conv' reads the conv's output (the notebook's); 'bn' the output of the BatchNorm that
directly follows the conv (the tensor the conv returns is that BatchNorm's input); 'act' is relu
of that BatchNorm's output. reduction 'mean' averages the filter's map over space (the notebook's);
'center' reads its single centre unit (H // 2, W // 2), Lucid's "neuron" objective.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from ..models.inspect import _StopForward

POINTS = ("conv", "bn", "act")
REDUCTIONS = ("mean", "center")


def reduce_maps(maps: torch.Tensor, reduction: str) -> torch.Tensor:
    """(B, H, W) maps -> (B,): their spatial mean, or their centre unit (H // 2, W // 2)."""
    if reduction == "mean":
        return maps.mean(dim=(1, 2))
    if reduction == "center":
        return maps[:, maps.shape[1] // 2, maps.shape[2] // 2]
    raise ValueError(f"unknown reduction {reduction!r}; choose from {', '.join(REDUCTIONS)}")


def following_batchnorm(model: nn.Module, conv: nn.Conv2d, name: str, channels: int, size: int) -> _BatchNorm:
    """The BatchNorm module whose input is the very tensor `conv` returns (first call), found by a dry run.

    One eval-mode, no-grad forward pass of a zero image with hooks: the conv's output is recorded
    and each BatchNorm's input is compared with it by identity, so neither registration order nor
    branches run in between can fool it. ValueError naming the layer when no BatchNorm module reads
    that output (pre-activation blocks, concatenation, a functional batch_norm) or when the one
    that does keeps no running statistics (it would then normalize by the batch, mixing filters).
    """
    seen: dict[str, Any] = {}

    def record(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        seen.setdefault("out", output)

    def check(module: nn.Module, inputs: Any) -> None:
        if "out" in seen and inputs and inputs[0] is seen["out"]:
            seen["bn"] = module
            raise _StopForward

    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    handles = [conv.register_forward_hook(record)] + [m.register_forward_pre_hook(check) for m in bns]
    param = next(model.parameters())
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, size, size, dtype=param.dtype, device=param.device))
    except _StopForward:
        pass
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    bn = seen.get("bn")
    if bn is None:
        raise ValueError(f"no BatchNorm directly follows conv layer {name!r} (no BatchNorm module takes its "
                         "output as input), so point 'bn' and 'act' are undefined there; use point='conv'")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"the BatchNorm after conv layer {name!r} keeps no running statistics; "
                         "point 'bn' and 'act' need them")
    return bn


class _Objective:
    """Sum over images of each one's objective: its own filter's map at `point`, reduced by `reduction`.

    The forward pass stops at the layer (a hook raises), so nothing after it is computed. For a
    plain nn.Conv2d read at 'conv', the objective is affine in the conv's input z: mean(conv(z)[f])
    (or its centre unit) = <z, G_f> + c, where G_f, its gradient, does not depend on z. G is
    computed once per batch of filters and the layer itself is never run during the ascent; the
    gradient that reaches the image is exactly the one the full layer would send back. A Conv2d
    subclass with its own forward (weight standardization...) may not be affine: it is run whole.
    At 'bn' and 'act' the conv's input is caught and `bn(conv(z))` (then relu) is computed here,
    with the model (hence `bn`) in eval mode.
    """

    def __init__(self, model: nn.Module, conv: nn.Conv2d, point: str = "conv", reduction: str = "mean",
                 bn: nn.Module | None = None) -> None:
        if point not in POINTS:
            raise ValueError(f"unknown point {point!r}; choose from {', '.join(POINTS)}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; choose from {', '.join(REDUCTIONS)}")
        if point != "conv" and bn is None:
            raise ValueError(f"point {point!r} needs the BatchNorm that follows the conv")
        self.model = model
        self.conv = conv
        self.point = point
        self.reduction = reduction
        self.bn = bn
        self.affine = type(conv).forward is nn.Conv2d.forward
        self.fast = self.affine and point == "conv"  # the constant-gradient path
        self._caught: torch.Tensor | None = None
        self._grad_key: tuple | None = None
        self._grad: torch.Tensor | None = None

    def _catch_input(self, _module: nn.Module, inputs: Any) -> None:
        self._caught = inputs[0]
        raise _StopForward

    def _catch_output(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        self._caught = output
        raise _StopForward

    def _run_to_layer(self, x: torch.Tensor) -> torch.Tensor:
        self._caught = None
        if self.affine or self.point != "conv":
            handle = self.conv.register_forward_pre_hook(self._catch_input)
        else:
            handle = self.conv.register_forward_hook(self._catch_output)
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        caught, self._caught = self._caught, None
        if caught is None:
            raise ValueError("the forward pass never reached the requested layer")
        return caught

    def unit_gradients(self, z: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        """G (B, C, H, W): gradient of the reduced conv output channel filters[b] w.r.t. input image b."""
        key = (tuple(filters.tolist()), tuple(z.shape[1:]), z.dtype, z.device)
        if key != self._grad_key:
            with torch.enable_grad():
                probe = torch.zeros((len(filters), *z.shape[1:]), dtype=z.dtype, device=z.device, requires_grad=True)
                out = self.conv(probe)
                unit = reduce_maps(out[torch.arange(len(filters), device=z.device), filters], self.reduction).sum()
                (self._grad,) = torch.autograd.grad(unit, probe)
            self._grad_key = key
        assert self._grad is not None
        return self._grad

    def _maps(self, caught: torch.Tensor) -> torch.Tensor:
        """All channel maps at the point, from what `_run_to_layer` caught (the conv's output or input)."""
        if self.point == "conv":
            return caught
        assert self.bn is not None
        out = self.bn(self.conv(caught))
        return F.relu(out) if self.point == "act" else out

    def __call__(self, x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        caught = self._run_to_layer(x)
        if self.fast:  # <z_b, G_fb> differs from the reduced map by a constant only
            return (caught * self.unit_gradients(caught.detach(), filters)).sum()
        rows = torch.arange(x.shape[0], device=x.device)
        return reduce_maps(self._maps(caught)[rows, filters], self.reduction).sum()


def make_objective(model: nn.Module, conv: nn.Conv2d, name: str, point: str, reduction: str,
                   channels: int, size: int) -> _Objective:
    """The objective for conv `name` read at `point`; finds the following BatchNorm when the point needs it."""
    bn = following_batchnorm(model, conv, name, channels, size) if point in ("bn", "act") else None
    return _Objective(model, conv, point, reduction, bn)
