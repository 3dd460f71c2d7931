"""Checkpoints for docs/RESULTS.md's deployment table: a seeded, untrained resnet-cifar-20 and folded copies.

    python benchmarks/deploy_models.py runs/deploy

writes `r20-color` (resnet-cifar-20, torch.manual_seed(0) initialization, never trained: latency and
MACs do not depend on training), `r20-folded` (it, folded to gray), and `demo-folded` (the embedded
demo model folded to gray). The merged models come from `achroma compress` (benchmarks/deploy_speed.sh).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from achroma.demo import default_model_path
from achroma.fold import fold_to_gray
from achroma.io import load_checkpoint, save_checkpoint
from achroma.models import create_model


def main(out: str) -> None:
    out_dir = Path(out)
    torch.manual_seed(0)
    r20 = create_model("resnet-cifar-20").eval()
    save_checkpoint(out_dir / "r20-color", r20, {"mode": "color", "normalization": "cifar",
                                                 "note": "seeded initialization (torch.manual_seed(0)), untrained"})
    demo, meta = load_checkpoint(default_model_path())
    for name, model, norm, extra in (("r20-folded", r20, "cifar", {}), ("demo-folded", demo, meta["normalization"],
                                                                       {"dataset": meta.get("dataset")})):
        gray, report = fold_to_gray(model, norm)
        save_checkpoint(out_dir / name, gray, {**report.checkpoint_meta(), **extra})
        print(f"{name}: fold max |logit difference| {report.max_abs_logit_diff:.2e}")
    print(f"wrote r20-color, r20-folded, demo-folded in {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/deploy")
