"""Issue 10's cost table: parameters and MACs of the dense DenseNet-BCs beside their grouped pointwise
(kDenseNet) partners from the registry, counted by torch's FlopCounter on one 32x32 image.

    python scripts/grouped_costs.py            # Markdown table on stdout
"""
from __future__ import annotations

import argparse

import torch

from achroma.models import create_model
from achroma.report import count_macs

PAIRS = [("densenet-bc-100", "kdensenet-bc-100"), ("densenet-bc-40", "kdensenet-bc-40"),
         ("seed-densenet", "kseed-densenet"), ("seed-densenet-tiny", "kseed-densenet-tiny")]


def costs(name: str, in_chans: int, size: int) -> tuple[int, int]:
    """(trainable parameters, MACs of one image)."""
    model = create_model(name, in_chans=in_chans).eval()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return params, count_macs(model, (in_chans, size, size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-chans", type=int, default=3)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| dense | params | MMACs | grouped | params | MMACs | params saved | MACs saved |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for dense, grouped in PAIRS:
        (dp, dm), (gp, gm) = costs(dense, args.in_chans, args.size), costs(grouped, args.in_chans, args.size)
        print(f"| {dense} | {dp:,} | {dm / 1e6:.1f} | {grouped} | {gp:,} | {gm / 1e6:.1f} | "
              f"{1 - gp / dp:.1%} | {1 - gm / dm:.1%} |")


if __name__ == "__main__":
    main()
