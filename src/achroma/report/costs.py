"""What a model costs to run: multiply-accumulates per image (forward hooks) and CPU latency.

MACs: one forward pass with hooks on every Conv2d and Linear; a conv's count is its output
elements per image times (in_channels / groups) x kernel area, a Linear's is outputs x inputs.
Bias adds, BN, activations and pooling are not counted (FLOPs ~ 2 x MACs). The folded first conv's
border term (`BorderCorrectedConv2d`) is a fixed map computed once per batch, not per image: left out.
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
import torch.nn as nn

MACS_METHOD = ("multiply-accumulates (MACs) per image, counted by forward hooks on Conv2d and Linear "
               "(bias, BN, activations, pooling not counted; FLOPs ~ 2 x MACs)")


def _param_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one image of shape (C, H, W) through every Conv2d and Linear."""
    total = 0

    def conv_hook(m: nn.Conv2d, inputs: Any, out: torch.Tensor) -> None:
        nonlocal total
        per_out = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        total += out[0].numel() * per_out

    def linear_hook(m: nn.Linear, inputs: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    flags = {m: m.training for m in model.modules()}
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    try:
        model.eval()
        model(torch.zeros(1, *input_shape, dtype=dtype, device=_param_device(model)))
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
    return int(total)


def flop_counter_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """FLOPs of one image by `torch.utils.flop_counter.FlopCounterMode` (a cross-check: 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    flags = {m: m.training for m in model.modules()}
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    try:
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape, dtype=dtype, device=_param_device(model)))
    finally:
        for m, flag in flags.items():
            m.training = flag
    return int(counter.get_total_flops())


def measure_latency(model: nn.Module, input_shape: tuple[int, int, int], batch: int, runs: int = 10,
                    warmup: int = 2) -> dict[str, Any]:
    """CPU wall time of one forward pass at `batch`: median (and min) over `runs` after `warmup` passes.

    Runs a float32 CPU copy under torch.inference_mode with the thread count as configured
    (torch.get_num_threads(), reported).
    """
    return measure_latencies({"model": (model, input_shape)}, batch, runs, warmup)["model"]


def measure_latencies(models: dict[str, tuple[nn.Module, tuple[int, int, int]]], batch: int, runs: int = 10,
                      warmup: int = 2) -> dict[str, dict[str, Any]]:
    """`measure_latency` for several (model, input shape) at once, timed round-robin.

    Run i of every model is taken before run i + 1 of any, so load from other processes on a
    shared machine falls on all of them alike and their medians stay comparable.
    """
    # The timing loop is `achroma.deploy.bench`'s, which `achroma bench` uses too: one way of timing.
    from ..deploy.bench import torch_latencies

    return torch_latencies(models, batch, runs, warmup)
