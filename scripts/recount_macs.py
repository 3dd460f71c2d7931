"""Recount the MACs of the merged models in docs/RESULTS.md with torch's FlopCounter.

MACs depend only on layer widths, so each reported merge is rebuilt with a clustering of the same
sizes (filters 0..k-1 kept, the rest merged into them) and counted three ways:
  hooks:    the old count, forward hooks on Conv2d and Linear modules only;
  ran:      FlopCounterMode with channel-map shortcuts run as the dense 1x1 map they used to be
            (what the old merged ResNets really computed);
  new:      FlopCounterMode as the models run now (channel maps as gathers; the folded conv's
            border map computed once per input size).
Each is printed with its change against the folded gray model counted the same way.

    PYTHONPATH=src python scripts/recount_macs.py
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from achroma.fold import fold_to_gray
from achroma.io import load_checkpoint
from achroma.models import create_model
from achroma.report import count_macs
from achroma.surgery import merge_channels
from achroma.surgery.layers import dense_shortcuts

RUNS = [  # (model, [(layer, filters kept)]) as reported in docs/RESULTS.md (issue 4) and README's demo
    ("demo", [("stem", 13)]),
    ("demo", [("stem", 13), ("features.0.0.conv", 7)]),
    ("resnet-cifar-20", [("conv1", 9)]),
    ("resnet-cifar-20", [("conv1", 9), ("layer1.0.conv1", 9)]),
    ("resnet-cifar-20", [("layer1.0.conv1", 15)]),  # one inner filter merged away
]


def hook_macs(model: nn.Module, shape: tuple[int, int, int]) -> int:
    """The old counter: output elements x (in_channels / groups) x kernel area, Conv2d and Linear only."""
    total = 0

    def conv(m: Any, _i: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m: Any, _i: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * m.in_features

    handles = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return total


def counts(model: nn.Module) -> dict[str, int]:
    shape = (1, 32, 32)
    with dense_shortcuts():
        ran = count_macs(model, shape)
    return {"hooks": hook_macs(model, shape), "ran": ran, "new": count_macs(model, shape)}


def main() -> None:
    print("| model | merge | hooks (old) | dense maps (what ran) | FlopCounter (new) |")
    print("|---|---|---:|---:|---:|")
    for name, merges in RUNS:
        color = load_checkpoint("src/achroma/assets/demo-model.safetensors")[0] if name == "demo" else create_model(name)
        gray, _ = fold_to_gray(color.eval(), "cifar")
        base = counts(gray)
        model, x = gray, torch.rand(1, 1, 32, 32)
        for layer, kept in merges:
            n = model.get_submodule(layer).out_channels
            model = merge_channels(model, layer, np.minimum(np.arange(n), kept - 1), x)
        c = counts(model)
        label = "folded" if not merges else ", ".join(f"{layer} -> {kept}" for layer, kept in merges)
        cells = [f"{c[k] / 1e6:.3f}M ({100 * (c[k] - base[k]) / base[k]:+.1f}%, {c[k] - base[k]:+,})" for k in c]
        print(f"| {name} | {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
