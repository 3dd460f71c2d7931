"""CPU latency, several models timed round-robin: PyTorch (`torch_latencies`, `measure_latency`) and
ONNX Runtime sessions (`ort_latencies`). `achroma bench` and the compress report time this way."""
from __future__ import annotations

import copy
import statistics
import time
from typing import Any, Callable

import torch
import torch.nn as nn


def round_robin(fns: dict[str, Callable[[], Any]], runs: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each of `runs` calls of every function after `warmup` untimed ones, interleaved."""
    if runs < 1:
        raise ValueError("runs must be at least 1")
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + runs):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            if i >= warmup:
                times[k].append(time.perf_counter() - t)
    return times


def summarize(seconds: list[float], batch: int) -> dict[str, Any]:
    """Median, 90th percentile and min in ms, and images per second from the median."""
    ms = sorted(1000 * s for s in seconds)
    p90 = statistics.quantiles(ms, n=10, method="inclusive")[-1] if len(ms) > 1 else ms[0]
    median = statistics.median(ms)
    return {"batch": batch, "runs": len(ms), "median_ms": median, "p90_ms": p90, "min_ms": ms[0],
            "images_per_s": 1000 * batch / median}


def _inputs(shape: tuple[int, int, int], batch: int) -> torch.Tensor:
    return torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0))


def torch_latencies(models: dict[str, tuple[nn.Module, tuple[int, int, int]]], batch: int, runs: int = 10,
                    warmup: int = 2, threads: int | None = None) -> dict[str, dict[str, Any]]:
    """PyTorch eager timings of several (model, input shape (C, H, W)) at `batch`, round-robin.

    A float32 CPU copy of each model in eval mode under torch.inference_mode; `threads` (default:
    as configured) is set with torch.set_num_threads for the measurement and restored after.
    """
    nets = {k: copy.deepcopy(m).float().cpu().eval() for k, (m, _) in models.items()}
    inputs = {k: _inputs(shape, batch) for k, (_, shape) in models.items()}
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        used = torch.get_num_threads()
        with torch.inference_mode():
            times = round_robin({k: (lambda net=net, x=inputs[k]: net(x)) for k, net in nets.items()}, runs, warmup)
    finally:
        torch.set_num_threads(saved)
    return {k: {**summarize(v, batch), "warmup": warmup, "threads": used, "engine": "torch"} for k, v in times.items()}


def ort_latencies(sessions: dict[str, tuple[Any, tuple[int, int, int]]], batch: int, runs: int = 10,
                  warmup: int = 2) -> dict[str, dict[str, Any]]:
    """ONNX Runtime timings of several (session, input shape) at `batch`, round-robin."""
    from .onnx_export import INPUT_NAME, OUTPUT_NAME

    feeds = {k: {INPUT_NAME: _inputs(shape, batch).numpy()} for k, (_, shape) in sessions.items()}
    fns = {k: (lambda s=s, f=feeds[k]: s.run([OUTPUT_NAME], f)) for k, (s, _) in sessions.items()}
    times = round_robin(fns, runs, warmup)
    return {k: {**summarize(v, batch), "warmup": warmup, "engine": "onnxruntime"} for k, v in times.items()}




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
