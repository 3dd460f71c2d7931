"""`achroma bench`: latency and throughput of several models, round-robin, in PyTorch and ONNX Runtime.

Prints a Markdown table (speedups against the first --weights); with --out also writes bench.md and
bench.json there. ONNX Runtime needs the `achroma[onnx]` extra (`--engines torch` does not).
`--engines torch-deploy` times PyTorch's deploy form (conv+BN fused, channels_last); `--int8` adds
each model's static int8 export beside its float one in ONNX Runtime, in the same round-robin;
`--size` sets the input size the models are timed at (latency does not depend on training).
"""
from __future__ import annotations

import sys
from pathlib import Path

from .common import check_out_dir


def register(sub) -> None:
    p = sub.add_parser("bench", help="latency and throughput of several models in PyTorch and ONNX Runtime")
    p.add_argument("--weights", action="append", required=True,
                   help="one of our checkpoints (.safetensors with its .json); repeat for more models; the first "
                        "is the baseline of the speedups")
    p.add_argument("--name", action="append", default=None, help="a label per --weights (default: the path)")
    p.add_argument("--size", type=int, default=32, help="input height and width the models are timed at, e.g. 224 "
                   "for the size a model will be deployed at (default 32)")
    p.add_argument("--engines", default="torch,onnxruntime",
                   help="comma-separated: torch (eager), torch-deploy (conv+BN fused, channels_last), onnxruntime "
                        "(default torch,onnxruntime)")
    p.add_argument("--int8", action="store_true", help="also time each model's static int8 ONNX export (QDQ, "
                   "per-channel weights, as `export --quantize int8` writes it) in ONNX Runtime")
    p.add_argument("--calib-images", type=int, default=32,
                   help="--int8: uniform random calibration images (speed only; default 32)")
    p.add_argument("--threads", default="1,all", help="thread counts, comma-separated; 'all' is the CPU count "
                   "(default 1,all)")
    p.add_argument("--batch", type=int, default=64, help="throughput batch size (default 64)")
    p.add_argument("--runs", type=int, default=30, help="timed runs at batch 1 (default 30)")
    p.add_argument("--throughput-runs", type=int, default=5, help="timed runs at --batch (default 5)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3; 1 at --batch)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset of the exports (default 18)")
    p.add_argument("--out", default=None, help="folder for bench.md and bench.json")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..deploy.bench import ENGINES, bench, parse_threads, render_markdown
    from ..io import atomic_write_bytes, atomic_write_json, is_checkpoint, load_checkpoint
    from ..training.evaluate import first_conv_in_channels

    if args.out:
        check_out_dir(args.out, list(args.weights), args.force)
    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    if not engines or any(e not in ENGINES for e in engines):
        raise ValueError(f"--engines {args.engines}: choose from {', '.join(ENGINES)}")
    threads = parse_threads(args.threads)
    if args.name and len(args.name) != len(args.weights):
        raise ValueError(f"{len(args.name)} --name for {len(args.weights)} --weights")
    names = args.name or list(args.weights)
    if len(set(names)) != len(names):
        raise ValueError("two models have the same name; pass --name for each")
    if min(args.size, args.batch, args.runs, args.throughput_runs, args.calib_images) < 1 or args.warmup < 0:
        raise ValueError("--size, --batch, --runs, --throughput-runs and --calib-images must be at least 1, "
                         "--warmup at least 0")
    if args.int8 and "onnxruntime" not in engines:
        raise ValueError("--int8 runs in ONNX Runtime: add onnxruntime to --engines")
    if "onnxruntime" in engines:
        from ..deploy import require_onnx

        require_onnx("ONNX Runtime benchmarks")
    for w in args.weights:
        if not is_checkpoint(w):
            raise FileNotFoundError(f"not one of our checkpoints (a .safetensors with its .json): {w}")
    models = {}
    for name, w in zip(names, args.weights):
        model, _ = load_checkpoint(w)
        models[name] = (model, (first_conv_in_channels(model) or 3, args.size, args.size))

    result = bench(models, engines=engines, threads=threads, batch=args.batch, runs=args.runs,
                   throughput_runs=args.throughput_runs, warmup=args.warmup, opset=args.opset,
                   log=lambda msg: print(msg, file=sys.stderr, flush=True), int8=args.int8,
                   calib_images=args.calib_images)
    result["source"] = {"weights": dict(zip(names, args.weights))}
    text = render_markdown(result)
    print(text)
    if args.out:
        out = Path(args.out)
        atomic_write_bytes(out / "bench.md", (text + "\n").encode())
        atomic_write_json(out / "bench.json", result)
        print(f"wrote {out / 'bench.md'} and {out / 'bench.json'}", file=sys.stderr)
    return 0
