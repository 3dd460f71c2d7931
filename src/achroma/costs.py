"""What a model costs to run: multiply-accumulates per image, counted by torch's FlopCounter.

MACs are counted by `torch.utils.flop_counter.FlopCounterMode`, which sees every matrix product and
convolution the forward pass runs at the ATen level, whatever module (or no module) issues it:
MACs = its FLOPs / 2. Bias adds, BN, activations, pooling and gathers are not counted (FLOPs ~ 2 x
MACs). Cached per-size maps (the folded first conv's border term) are computed in a warm-up pass,
so the count is what each further image costs.
"""
from __future__ import annotations


import torch
import torch.nn as nn

MACS_METHOD = ("multiply-accumulates (MACs) per image, counted by torch.utils.flop_counter.FlopCounterMode "
               "(every convolution and matrix product; bias, BN, activations, pooling not counted; FLOPs ~ 2 x MACs)")


def _param_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one image of shape (C, H, W): FlopCounterMode's FLOPs / 2."""
    return flop_counter_flops(model, input_shape) // 2


def flop_counter_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """FLOPs of one image by `torch.utils.flop_counter.FlopCounterMode` (2 per MAC), after a warm-up pass."""
    return int(run_flop_counter(model, input_shape).get_total_flops())


def run_flop_counter(model: nn.Module, input_shape: tuple[int, int, int]):
    """The FlopCounterMode of one image's forward pass (eval mode, no grad), after a warm-up pass that
    fills per-size caches; the model's train/eval flags are put back. Per module: get_flop_counts()."""
    from torch.utils.flop_counter import FlopCounterMode

    flags = {m: m.training for m in model.modules()}
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    x = torch.zeros(1, *input_shape, dtype=dtype, device=_param_device(model))
    try:
        model.eval()
        with torch.no_grad():
            model(x)
            with FlopCounterMode(display=False) as counter:
                model(x)
    finally:
        for m, flag in flags.items():
            m.training = flag
    return counter
