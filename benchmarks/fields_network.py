"""Benchmark: the receptive fields of every channel group of a network (what `--layers all` computes).

Times one whole-network fields pass at the default settings (100 steps, 1 restart, all filters of a
layer in one batch), layer by layer, in the color model as `compress` does (fields_from='color'),
and, on one layer, the notebook's way (one filter at a time, `fields.notebook_field`) against the
batched way, as a ratio measured in the same run. Asserts nothing about time. Run it when the
machine is otherwise idle:

    PYTHONPATH=src python benchmarks/fields_network.py --weights checkpoints/resnet-cifar-20-30ep.safetensors
        [--steps 100] [--restarts 1] [--one-layer layer3.0.conv1] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from achroma.fields import compute_receptive_fields, resolve_conv
from achroma.fold import fold_to_gray
from achroma.io import load_checkpoint
from achroma.surgery.groups import channel_groups
from fields import notebook_field  # benchmarks/fields.py: the notebook's one-filter-at-a-time ascent


def group_roots(model: torch.nn.Module, normalization, size: int) -> list[str]:
    """The roots of the folded model's mergeable channel groups (the layers `--layers all` merges)."""
    gray, _ = fold_to_gray(model, normalization)
    example = torch.zeros(1, 1, size, size)
    return [g.root for g in channel_groups(gray.eval(), example) if g.refused is None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="an achroma checkpoint of a color model")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--one-layer", default=None, help="the layer timed one filter at a time too "
                        "(default: the deepest group root)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = load_checkpoint(args.weights)
    model.eval()
    norm = meta.get("normalization")
    size = 32
    roots = group_roots(model, norm, size)
    print(f"{args.weights}: {len(roots)} channel groups, {args.steps} steps, {args.restarts} restart(s), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    compute_receptive_fields(model, roots[0], normalization=norm, steps=2, progress=False)  # warm-up
    total = 0.0
    for root in roots:
        start = time.perf_counter()
        compute_receptive_fields(model, root, normalization=norm, steps=args.steps, restarts=args.restarts,
                                 progress=False)
        seconds = time.perf_counter() - start
        total += seconds
        print(f"  {root} ({resolve_conv(model, root).out_channels} filters): {seconds:.2f} s")
    print(f"whole network: {total:.1f} s ({total / 60:.2f} min)")

    layer = args.one_layer or roots[-1]
    conv = resolve_conv(model, layer)
    from achroma.data import get_normalization

    to_input = get_normalization(norm)
    start = time.perf_counter()
    one = np.concatenate([notebook_field(model, conv, f, args.steps, to_input) for f in range(conv.out_channels)])
    t_one = time.perf_counter() - start
    start = time.perf_counter()
    batch = compute_receptive_fields(model, layer, normalization=norm, steps=args.steps, progress=False).raw
    t_batch = time.perf_counter() - start
    print(f"{layer} ({conv.out_channels} filters): one at a time {t_one:.2f} s, batched {t_batch:.2f} s, "
          f"ratio {t_one / t_batch:.1f}x, max |diff| {np.abs(one - batch).max():.1e} (pixels 0..255); "
          f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
