"""How large is the fold's border error, and what does the exact border cost?

Folds a color checkpoint to gray twice, border='bias' (the plain fold: normalization folded into the
first conv's weight and bias) and border='exact' (the missing padding term added back), and prints
on the test images: the largest logit difference to the color model fed gray x3, the share of
predictions that change, the accuracies, and the CPU time of one batch of each (ratio to the plain
fold, measured in the same run); then the batch-1 latency of the color model against both folds,
timed round-robin in one run (the exact border's map is computed once per input size, so at batch
1 the folded model should be no slower than the color model).

    python benchmarks/fold_border.py --weights src/achroma/assets/demo-model.safetensors
"""
from __future__ import annotations

import argparse

import torch

from achroma.data import apply_mode, get_normalization, load_dataset
from achroma.fold import fold_to_gray
from achroma.io import load_checkpoint
from achroma.report import measure_latencies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="src/achroma/assets/demo-model.safetensors")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--test-limit", type=int, default=None, help="test images per class (default: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs-b1", type=int, default=300, help="timed batch-1 passes per model")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model, meta = load_checkpoint(args.weights)
    model.eval()
    norm = get_normalization(meta.get("normalization", "cifar"))
    test = load_dataset(args.dataset, "test", args.data_dir)
    if args.test_limit:
        test = test.stratified_subset(args.test_limit)
    gray = {border: fold_to_gray(model, norm, border=border)[0].eval() for border in ("bias", "exact")}

    logits = {"color-gray3": [], "bias": [], "exact": []}
    with torch.inference_mode():
        for start in range(0, len(test), 500):
            x = test.images[start: start + 500].float() / 255
            g = apply_mode(x, "gray")
            logits["color-gray3"].append(model(norm(apply_mode(x, "gray3"))))
            for border, net in gray.items():
                logits[border].append(net(g))
    logits = {k: torch.cat(v) for k, v in logits.items()}
    ref = logits["color-gray3"]
    size = int(test.images.shape[-1])
    times = measure_latencies({b: (net, (1, size, size)) for b, net in gray.items()}, batch=256, runs=10)
    single = measure_latencies({"color": (model, (3, size, size)), **{b: (net, (1, size, size)) for b, net in gray.items()}},
                               batch=1, runs=args.runs_b1, warmup=20)

    print(f"{args.weights} on {test.extra.get('display_name', test.name)}: {len(test)} test images, "
          f"{args.threads} thread(s)")
    print(f"color model on gray x3: accuracy {(ref.argmax(1) == test.labels).float().mean():.4f}")
    for border in ("bias", "exact"):
        out = logits[border]
        changed = (out.argmax(1) != ref.argmax(1)).float().mean()
        print(f"fold border={border:5s}: accuracy {(out.argmax(1) == test.labels).float().mean():.4f}, "
              f"max |logit - color-gray3| {(out - ref).abs().max():.2e}, predictions changed {100 * changed:.2f}%, "
              f"batch 256 in {times[border]['median_ms']:.1f} ms")
    print(f"exact border costs {times['exact']['median_ms'] / times['bias']['median_ms']:.3f}x the plain fold's time")
    c = single["color"]["median_ms"]
    for key in ("color", "bias", "exact"):
        print(f"batch 1, median of {args.runs_b1}: {key:5s} {single[key]['median_ms']:.3f} ms "
              f"({single[key]['median_ms'] / c:.3f}x the color model)")


if __name__ == "__main__":
    main()
