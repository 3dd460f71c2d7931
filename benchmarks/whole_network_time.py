"""Seconds for a whole-network budget on torchvision models (random weights): fold, plan, merge.

    python benchmarks/whole_network_time.py densenet121 64      # issue 21: under 2 minutes on 2 cores

Prints the seconds per stage of `Compressor.fit` (k-means on the weights, half the MACs) and the
MACs reached (FlopCounter). The model's weights are random: time depends on shapes, not training.
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch
import torchvision.models as tvm

from achroma.costs import count_macs
from achroma.pipeline import Budget, CompressConfig, Compressor
from achroma.report.table import stage_seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="densenet121")
    p.add_argument("size", nargs="?", type=int, default=64)
    p.add_argument("--macs", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = tvm.get_model(args.model, weights=None, num_classes=10).eval()
    start = time.perf_counter()
    comp = Compressor(CompressConfig(seed=0, progress=False), Budget(macs=args.macs)).fit(model, "imagenet",
                                                                                       size=args.size)
    total = time.perf_counter() - start
    shape = (1, args.size, args.size)
    kept = count_macs(comp.model_, shape) / count_macs(comp.folded_, shape)
    print(f"{args.model} at {args.size}x{args.size}, {torch.get_num_threads()} thread(s): {total:.1f} s for "
          f"{len(comp.plan_.layers)} groups; {kept:.1%} of the folded model's MACs kept")
    print("seconds per stage:", {k: round(v, 1) for k, v in stage_seconds(comp.timings_).items()})


if __name__ == "__main__":
    main()
