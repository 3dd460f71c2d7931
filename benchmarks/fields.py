"""Benchmark: receptive fields one filter at a time (the notebook's way) vs all filters in one batch.

The first two conv layers (forward order) of `seed-densenet`, random init (timings do not depend
on the weights), the notebook's recipe: 32x32, 100 steps, step 0.5. The notebook's way is written
out here as the notebook does it: one image per filter, the whole layer's output computed (the
forward pass still stops at the layer, as Keras evaluates only the subgraph the loss needs).
Both ways run in this process, from the same start images, with torch's default thread count,
each timed --repeats times (interleaved, best kept); prints times, their ratio and the largest
difference between the results. Asserts nothing about
time. Run when the machine is otherwise idle:
    PYTHONPATH=src python benchmarks/fields.py [--steps 100] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn as nn

from achroma.data import get_normalization
from achroma.fields import compute_receptive_fields, conv_forward_order, initial_images
from achroma.models import create_model


class _Stop(Exception):
    pass


def notebook_field(model: nn.Module, conv: nn.Module, f: int, steps: int, norm, size: int = 32) -> np.ndarray:
    """One filter's field the notebook's way: batch of one image, mean of channel f of the layer output."""
    caught: list[torch.Tensor] = []

    def hook(_m, _i, out):
        caught.append(out)
        raise _Stop

    handle = conv.register_forward_hook(hook)
    x = torch.from_numpy(initial_images(0, 0, [f], 3, size)).float()
    try:
        for _ in range(steps):
            x.requires_grad_(True)
            caught.clear()
            try:
                model(norm(x / 255.0))
            except _Stop:
                pass
            loss = caught[0][:, f].mean()
            (grad,) = torch.autograd.grad(loss, x)
            grad = grad / (grad.pow(2).mean().sqrt() + 1e-5)
            x = (x + 0.5 * grad).detach()
    finally:
        handle.remove()
    return x.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--repeats", type=int, default=3, help="time each way this many times (interleaved), keep the best")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("seed-densenet").eval()
    norm = get_normalization("cifar")
    modules = dict(model.named_modules())
    layers = conv_forward_order(model)[:2]
    print(f"seed-densenet (random init), 32x32, {args.steps} steps, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, best of {args.repeats}, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    total_one = total_batch = 0.0
    for layer in layers:
        conv = modules[layer]
        n = conv.out_channels
        notebook_field(model, conv, 0, 2, norm)  # warm-up: first-call costs stay out of the timings
        compute_receptive_fields(model, layer, normalization="cifar", steps=2, progress=False)
        t_one = t_batch = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            one = np.concatenate([notebook_field(model, conv, f, args.steps, norm) for f in range(n)])
            t_one = min(t_one, time.perf_counter() - start)
            start = time.perf_counter()
            batch = compute_receptive_fields(model, layer, normalization="cifar", steps=args.steps, progress=False).raw
            t_batch = min(t_batch, time.perf_counter() - start)
        total_one, total_batch = total_one + t_one, total_batch + t_batch
        print(f"{layer} ({n} filters): one at a time {t_one:.2f} s, batched {t_batch:.3f} s, "
              f"ratio {t_one / t_batch:.1f}x, max |diff| {np.abs(one - batch).max():.1e} (pixels 0..255)")
    print(f"both layers: one at a time {total_one:.2f} s, batched {total_batch:.3f} s, "
          f"ratio {total_one / total_batch:.1f}x")


if __name__ == "__main__":
    main()
