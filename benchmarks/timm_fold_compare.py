"""timm's own gray conversion (in_chans=1) against achroma's fold, on timm's convolutional families (issue 24).

For each family of tests/test_timm_zoo.py (one small variant, random weights, BatchNorm randomized,
float64, one 32x32 gray image): the color model on the gray image copied to 3 channels and normalized
per channel (timm's pretrained_cfg mean/std) is the reference. timm's conversion sums the first conv's
RGB weights (`timm.models.adapt_input_conv`) and is fed the gray image normalized with the
luma-weighted mean and std; achroma's fold takes the raw gray image. Printed: the largest difference
of the logits and of the first conv's output, relative to the largest value of the reference.

    PYTHONPATH=src:tests python benchmarks/timm_fold_compare.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import test_timm_zoo as zoo  # the families, their build and the comparison, as the test runs them

    torch.set_num_threads(1)
    print("| family | variant | normalization | timm in_chans=1: logits | first conv | achroma fold: logits | first conv |")
    print("|---|---|---|---|---|---|---|")
    for fam in sorted(zoo.PICK):
        model, x = zoo._build(fam)
        c = zoo.fold_comparison(model, x)
        stats = "ImageNet" if len(set(c["norm"].mean)) > 1 else f"{c['norm'].mean[0]:g}/{c['norm'].std[0]:g}"
        print(f"| {fam} | {zoo.PICK[fam][0]} | {stats} | {c['rel_timm']:.1e} | {c['stem_timm']:.1e} | "
              f"{c['rel_ours']:.1e} | {c['stem_ours']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
