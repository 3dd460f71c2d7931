"""docs/RESULTS.md's deployment table from `achroma bench` results (bench.json), with time saved / MACs saved.

    python benchmarks/deploy_table.py runs/deploy/bench-demo/bench.json runs/deploy/bench-r20/bench.json
    python benchmarks/deploy_table.py --ops runs/deploy/onnx/*.onnx     # the ops of each exported graph

For each bench file (models in the order color, folded, merged), one row per model, engine and thread
count: MACs, batch-1 latency (median, p90), throughput, and for the merged model the share of time it
saves against the folded model divided by the share of MACs it saves (1.0: every MAC saved is time
saved; 0: none reaches the clock), at batch 1 and at the throughput batch.
"""
from __future__ import annotations

import json
import sys

ENGINE = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime"}


def main(paths: list[str]) -> None:
    for path in paths:
        result = json.loads(open(path).read())
        b = result["settings"]["throughput_batch"]
        names = list(result["models"])
        folded, merged = names[1], names[-1]
        env = dict(result["environment"])
        load = env.pop("load_average_1min", None)
        print(f"\n{path}: {result['settings']['runs']} runs at batch 1, {result['settings']['throughput_runs']} at "
              f"batch {b}; {env}; 1-minute load average before/after: {load}\n")
        print(f"| model | MMACs | engine | threads | b=1 median (ms) | b=1 p90 (ms) | b={b} images/s | "
              f"speedup vs color b=1 / b={b} | time saved / MACs saved vs folded, b=1 / b={b} |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
        rows = {(r["model"], r["engine"], r["threads"]): r for r in result["rows"]}
        for (model, engine, threads), r in rows.items():
            ratio = "–"
            if model == merged:
                f = rows[(folded, engine, threads)]
                macs_saved = 1 - r["macs"] / f["macs"]
                lat_saved = 1 - r["latency_b1"]["median_ms"] / f["latency_b1"]["median_ms"]
                thr_saved = 1 - f["throughput"]["images_per_s"] / r["throughput"]["images_per_s"]
                ratio = f"{lat_saved / macs_saved:.2f} / {thr_saved / macs_saved:.2f}"
            print(f"| {model} | {r['macs'] / 1e6:.2f} | {ENGINE[engine]} | {threads} | "
                  f"{r['latency_b1']['median_ms']:.2f} | {r['latency_b1']['p90_ms']:.2f} | "
                  f"{r['throughput']['images_per_s']:.0f} | {r['latency_speedup']:.2f}x / "
                  f"{r['throughput_speedup']:.2f}x | {ratio} |")


def ops(paths: list[str]) -> None:
    """How many nodes of each op type each exported ONNX graph has."""
    from collections import Counter

    import onnx

    for path in paths:
        counts = Counter(node.op_type for node in onnx.load(path).graph.node)
        print(f"{path}: " + ", ".join(f"{op} {n}" for op, n in sorted(counts.items())))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--ops"]:
        ops(sys.argv[2:])
    else:
        main(sys.argv[1:])
