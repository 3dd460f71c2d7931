"""docs/RESULTS.md's issue-23 tables from benchmarks/int8_table.sh's outputs.

    python benchmarks/int8_table.py runs/int8

Reads `<root>/bench-<family>/bench.json` (achroma bench --int8: PyTorch eager / deploy form, ONNX
Runtime float and int8, 1 thread, round-robin) and, for the CIFAR families, the int8 exports
`<root>/onnx/<family>-<model>-int8.onnx` (their `achroma.quantization` metadata holds the float and
int8 accuracy on the test images and both file sizes). Prints one table per family and the issue's
aims, each as measured. Speedups are against the color fp32 model timed in the same run; "time
saved / MACs saved" is against the folded fp32 model (1.00: every MAC saved is time saved).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

FAMILIES = ("r20", "demo", "tv-resnet18", "tv-mobilenet_v2")
KEYS = {"color": "color", "folded": "folded", "50%": "50", "50% r8": "50r8", "30% r8": "30r8", "30%": "30"}
ENGINES = ("torch", "torch-deploy", "onnxruntime")


def _quant(root: Path, fam: str, key: str) -> dict | None:
    path = root / "onnx" / f"{fam}-{KEYS[key]}-int8.onnx"
    if not path.is_file():
        return None
    import onnx

    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    return json.loads(meta["achroma.quantization"])


def _ratio(saved_time: float, saved_macs: float) -> str:
    return f"{saved_time / saved_macs:.2f}" if saved_macs > 0 else "–"


def table(root: Path, fam: str) -> dict:
    result = json.loads((root / f"bench-{fam}" / "bench.json").read_text())
    rows = {(r["model"], r["engine"]): r for r in result["rows"] if r["threads"] == 1}
    b = result["settings"]["throughput_batch"]
    size = result["models"][f"{fam} color"]["input_shape"][-1]
    env = dict(result["environment"])
    load = env.pop("load_average_1min", None)
    scored = not fam.startswith("tv-")
    print(f"\n### {fam} ({size}x{size}; {result['settings']['runs']} runs at batch 1, "
          f"{result['settings']['throughput_runs']} at batch {b}; 1-minute load average before/after {load})\n")
    head = ["model", "precision", "MMACs"]
    if scored:
        head += ["accuracy (10,000 test)", "int8 - float (points)"]
    head += ["ONNX file (MB)", "ORT b=1 ms", f"ORT b={b} img/s", f"ORT speedup vs color fp32 b=1 / b={b}"]
    engines = [e for e in ("torch", "torch-deploy") if (f"{fam} color", e) in rows]
    for e in engines:
        label = "PyTorch eager" if e == "torch" else "PyTorch deploy"
        head += [f"{label} b=1 ms", f"{label} b={b} img/s"]
    head += [f"time saved / MACs saved vs folded, b={b} (ORT / PyTorch deploy)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
    out: dict = {"rows": rows, "b": b}
    folded = f"{fam} folded"
    for key in KEYS:
        for dtype in ("float32", "int8"):
            name = f"{fam} {key}" + (" int8" if dtype == "int8" else "")
            ort = rows.get((name, "onnxruntime"))
            if ort is None:
                continue
            cells = [f"{fam} {key}", "int8" if dtype == "int8" else "fp32", f"{ort['macs'] / 1e6:.2f}"]
            if scored:
                q = _quant(root, fam, key)
                if q is None:
                    cells += ["–", "–"]
                else:
                    ev = q["evaluation"]
                    acc = ev["int8_accuracy"] if dtype == "int8" else ev["float_accuracy"]
                    cells += [f"{100 * acc:.2f}%", f"{-ev['drop_points']:+.2f}" if dtype == "int8" else ""]
            cells += [f"{ort['file_bytes'] / 1e6:.2f}", f"{ort['latency_b1']['median_ms']:.2f}",
                      f"{ort['throughput']['images_per_s']:.0f}",
                      f"{ort['latency_speedup']:.2f}x / {ort['throughput_speedup']:.2f}x"]
            for e in engines:
                r = rows.get((name, e))
                cells += ["", ""] if r is None else [f"{r['latency_b1']['median_ms']:.2f}",
                                                     f"{r['throughput']['images_per_s']:.0f}"]
            ratios = []
            for e in ("onnxruntime", "torch-deploy"):
                r, f = rows.get((name, e)), rows.get((folded, e))
                if r is None or f is None or dtype == "int8" or key in ("color", "folded"):
                    ratios.append("–")
                    continue
                saved_macs = 1 - r["macs"] / f["macs"]
                saved_time = 1 - f["throughput"]["images_per_s"] / r["throughput"]["images_per_s"]
                ratios.append(_ratio(saved_time, saved_macs))
            cells.append(" / ".join(ratios))
            print("| " + " | ".join(cells) + " |")
    print(f"\nEnvironment: {env}")
    return out


def aims(root: Path, results: dict) -> None:
    print("\n### The issue's aims, as measured\n")
    if "tv-resnet18" in results:
        rows, b = results["tv-resnet18"]["rows"], results["tv-resnet18"]["b"]
        color = rows[("tv-resnet18 color", "onnxruntime")]
        for key in ("50%", "50% r8"):
            q = rows.get((f"tv-resnet18 {key} int8", "onnxruntime"))
            if q is None:
                continue
            speed = color["latency_b1"]["median_ms"] / q["latency_b1"]["median_ms"]
            smaller = color["file_bytes"] / q["file_bytes"]
            print(f"- resnet18 gray {key} MACs int8 vs color fp32 (ONNX Runtime, 1 thread, 224x224): "
                  f"{speed:.2f}x faster at batch 1 (aim >= 2.5x: {'met' if speed >= 2.5 else 'NOT met'}), "
                  f"{speed_b(color, q):.2f}x at batch {b}; file {smaller:.1f}x smaller "
                  f"(aim >= 7x: {'met' if smaller >= 7 else 'NOT met'})")
    for fam in ("r20", "demo"):
        for key in KEYS:
            q = _quant(root, fam, key)
            if q is None:
                continue
            ev = q["evaluation"]
            drop = ev["drop_points"]
            print(f"- {fam} {key}: int8 {100 * ev['int8_accuracy']:.2f}% vs float {100 * ev['float_accuracy']:.2f}% "
                  f"on {ev['images']} test images ({-drop:+.2f} points; aim within 0.5: "
                  f"{'met' if abs(drop) <= 0.5 else 'NOT met'}), predictions agree {100 * ev['agreement']:.2f}%")
    for fam, res in results.items():
        rows, b = res["rows"], res["b"]
        for e in ("onnxruntime", "torch-deploy", "torch"):
            f = rows.get((f"{fam} folded", e))
            if f is None:
                continue
            for key in ("50% r8", "30% r8", "50%", "30%"):
                r = rows.get((f"{fam} {key}", e))
                if r is None:
                    continue
                saved_macs = 1 - r["macs"] / f["macs"]
                saved_time = 1 - f["throughput"]["images_per_s"] / r["throughput"]["images_per_s"]
                met = "met" if saved_time / saved_macs >= 0.8 else "NOT met"
                aim = "" if "r8" not in key else f" (aim >= 0.8: {met})"
                print(f"- {fam} {key} vs folded, {e}, batch {b}: MACs saved {100 * saved_macs:.1f}%, time saved "
                      f"{100 * saved_time:.1f}%, ratio {saved_time / saved_macs:.2f}{aim}")
        c, f = rows.get((f"{fam} color", "onnxruntime")), rows.get((f"{fam} folded", "onnxruntime"))
        if c and f:
            print(f"- {fam} folded vs color fp32 in ONNX Runtime: {f['latency_speedup']:.2f}x at batch 1, "
                  f"{f['throughput_speedup']:.2f}x at batch {b} (aim: at least as fast)")
        slower = [k for (k, e), r in rows.items() if e == "onnxruntime" and k.endswith(" int8")
                  and r["latency_b1"]["median_ms"] > rows[(k[:-5], e)]["latency_b1"]["median_ms"]]
        if slower:
            print(f"- {fam}: int8 slower than its float model at batch 1 in ONNX Runtime: {', '.join(slower)}")


def speed_b(color: dict, q: dict) -> float:
    return q["throughput"]["images_per_s"] / color["throughput"]["images_per_s"]


def main(root: str) -> None:
    base = Path(root)
    results = {fam: table(base, fam) for fam in FAMILIES if (base / f"bench-{fam}" / "bench.json").is_file()}
    aims(base, results)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/int8")
