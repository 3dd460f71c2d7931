"""CPU latency of PyTorch models: median wall time per forward pass, several models timed round-robin."""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from .bench import torch_latencies


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
    return torch_latencies(models, batch, runs, warmup)
