"""Checkpoints for docs/RESULTS.md's issue-23 tables (int8, fused layers, rounded widths).

    python benchmarks/int8_models.py runs/int8

writes, in that folder: `r20-folded` (the trained checkpoints/resnet-cifar-20-30ep, folded to gray),
`demo-folded` (the embedded demo model, folded), and for torchvision's resnet18 and mobilenet_v2
(`torch.manual_seed(0)` initialization, 10 classes, ImageNet normalization, **never trained**: these
are timed, not scored) `tv-<name>-color` and `tv-<name>-folded`. The merged models come from
`achroma compress` (benchmarks/int8_table.sh).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from achroma.demo import default_model_path
from achroma.fold import fold_to_gray
from achroma.io import load_checkpoint, save_checkpoint
from achroma.models import create_model

R20 = "checkpoints/resnet-cifar-20-30ep.safetensors"


def main(out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, path in (("r20-folded", R20), ("demo-folded", str(default_model_path()))):
        model, meta = load_checkpoint(path)
        gray, report = fold_to_gray(model.eval(), meta["normalization"])
        save_checkpoint(out_dir / name, gray, {**report.checkpoint_meta(), "dataset": meta.get("dataset")})
        print(f"{name}: fold max |logit difference| {report.max_abs_logit_diff:.2e}")
    for arch in ("resnet18", "mobilenet_v2"):
        torch.manual_seed(0)
        color = create_model(f"tv:{arch}", in_chans=3, num_classes=10).eval()
        note = "torch.manual_seed(0) initialization, untrained: for speed only"
        save_checkpoint(out_dir / f"tv-{arch}-color", color,
                        {"mode": "color", "normalization": "imagenet", "note": note})
        gray, report = fold_to_gray(color, "imagenet", example_input=torch.rand(2, 1, 224, 224))
        save_checkpoint(out_dir / f"tv-{arch}-folded", gray, {**report.checkpoint_meta(), "note": note})
        print(f"tv-{arch}: fold max |logit difference| {report.max_abs_logit_diff:.2e}")
    print(f"wrote the checkpoints in {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/int8")
