"""Draw every weight of a model afresh, its architecture kept: the from-scratch baseline for a
compressed, grouped or otherwise rebuilt model (same shapes, same plan, no trained values)."""
from __future__ import annotations

import torch
from torch import nn


def reinitialize(model: nn.Module, seed: int | None = None) -> nn.Module:
    """Call `reset_parameters()` of every module that owns parameters (PyTorch's default init, as the
    registry's models use) and reset batch-norm statistics; in place, returned for chaining.

    Raises if a module owns parameters and has no `reset_parameters`, so no trained value survives
    silently. `seed` makes the draw repeatable.
    """
    if seed is not None:
        torch.manual_seed(seed)
    for name, module in model.named_modules():
        owns = any(True for _ in module.parameters(recurse=False))
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        elif owns:
            raise TypeError(f"{name or 'model'} ({type(module).__name__}) owns parameters but has no "
                            "reset_parameters(): cannot re-initialize it")
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            module.reset_running_stats()
        if isinstance(getattr(module, "border_kernel", None), torch.Tensor):  # the fold's border term: from
            with torch.no_grad():  # scratch the first conv is a plain conv on raw gray
                module.border_kernel.zero_()
    return model
