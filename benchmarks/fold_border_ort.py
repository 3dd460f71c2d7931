"""Where the fold's border correction sits, and what it costs in ONNX Runtime (issue 23).

Exports one color checkpoint and three forms of its fold, and times all four round-robin in ONNX
Runtime on 1 thread (batch 1 and batch 64):

- `add+BN`: the border map added after the first conv, BN unfused (how exports were written before
  issue 23: Conv -> Add(map) -> BatchNormalization; ONNX Runtime cannot fuse the BN into the conv);
- `add`: BN folded into the conv by `achroma.deploy.fuse` (Conv -> Add(map) -> ReLU);
- `mask`: how `achroma export` writes it now, the correction as a mask input channel of the first
  conv (`BorderMaskConv2d`): one conv, fused with its ReLU.

Prints each form's op count after ONNX Runtime's optimizations, the median times and their ratio
to the color model (above 1: faster than color).

    python benchmarks/fold_border_ort.py --weights checkpoints/resnet-cifar-20-30ep.safetensors
"""
from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

import torch

from achroma.deploy.bench import ort_latencies
from achroma.deploy.fuse import fuse_conv_bn
from achroma.deploy.onnx_export import export_onnx, ort_session
from achroma.fold import fold_to_gray
from achroma.io import load_checkpoint


def optimized_ops(onnx_model: bytes) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime runs (all optimizations, as `ort_session` sets them)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
        return dict(collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="checkpoints/resnet-cifar-20-30ep.safetensors")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--runs-b1", type=int, default=300)
    p.add_argument("--runs-b64", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2, help="repeat the whole measurement (default 2)")
    args = p.parse_args()
    torch.set_num_threads(1)

    color, meta = load_checkpoint(args.weights)
    color.eval()
    s = args.size
    gray, _ = fold_to_gray(color, meta["normalization"], example_input=torch.rand(2, 1, s, s))
    gray.eval()
    fused, report = fuse_conv_bn(gray)
    exports = {"color": export_onnx(color, (3, s, s)), "add+BN": export_onnx(gray, (1, s, s), fuse=False),
               "add": export_onnx(fused, (1, s, s), fuse=False), "mask": export_onnx(gray, (1, s, s))}
    shapes = {k: (3 if k == "color" else 1, s, s) for k in exports}
    print(f"{args.weights}, {s}x{s}, ONNX Runtime, 1 thread; {report.summary()} in the add and mask forms")
    for k, b in exports.items():
        ops = optimized_ops(b)
        print(f"{k:7s} {sum(ops.values())} nodes after ONNX Runtime's optimizations: "
              + ", ".join(f"{op} {n}" for op, n in sorted(ops.items())))
    for r in range(args.rounds):
        for batch, runs in ((1, args.runs_b1), (64, args.runs_b64)):
            t = ort_latencies({k: (ort_session(b, 1), shapes[k]) for k, b in exports.items()}, batch, runs, warmup=10)
            c = t["color"]["median_ms"]
            print(f"round {r + 1}, batch {batch}, median of {runs}: " + ", ".join(
                f"{k} {v['median_ms']:.3f} ms ({c / v['median_ms']:.3f}x color)" for k, v in t.items()))


if __name__ == "__main__":
    main()
