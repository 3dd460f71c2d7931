"""Latency and throughput of several models, round-robin, in PyTorch eager and in ONNX Runtime.

Round-robin: run i of every model is taken before run i + 1 of any, so load from other processes
on a shared machine falls on all of them alike and their ratios stay comparable (the idea of
`achroma.report.measure_latencies`, which now calls `torch_latencies` here, so `compress` reports
and `achroma bench` time PyTorch the same way). Threads are set explicitly: torch.set_num_threads(n)
for PyTorch (restored after), SessionOptions(intra_op_num_threads=n, inter_op_num_threads=1) for
ONNX Runtime. Latency is batch 1 (median and 90th percentile of the runs); throughput is images per
second at a larger batch (from the median run). Speedups are against the first model, measured in
the same run with the same engine and threads. Nothing here fails on time.

Issue 23: engine `torch-deploy` times PyTorch's deploy form (conv+BN fused from the model's fx graph,
channels_last; `achroma.deploy.fuse`), and `int8=True` adds, in ONNX Runtime, each model's static
int8 export (`achroma.deploy.quantize`) beside its float export, in the same round-robin, so int8
speedups are against the first float model.
"""
from __future__ import annotations

import os
import platform
from typing import Any, Callable

import torch
import torch.nn as nn

ENGINES = ("torch", "torch-deploy", "onnxruntime")
ENGINE_NAMES = {"torch": "PyTorch eager", "torch-deploy": "PyTorch deploy (fused, channels_last)",
                "onnxruntime": "ONNX Runtime"}
DEFAULT_ENGINES = ("torch", "onnxruntime")
INT8_SUFFIX = " int8"

from .latency import _inputs, ort_latencies, round_robin, summarize, torch_latencies  # noqa: E402,F401


def parse_threads(spec: str | list[int] | tuple[int, ...]) -> list[int]:
    """'1,all' -> [1, os.cpu_count()] (duplicates dropped, order kept)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[int] = []
    for item in items:
        item = str(item).strip()
        n = (os.cpu_count() or 1) if item == "all" else int(item) if item.isdigit() else 0
        if n < 1:
            raise ValueError(f"threads must be positive integers or 'all', got {item!r}")
        if n not in out:
            out.append(n)
    return out


def _int8_exports(exports: dict[str, bytes], shapes: dict[str, tuple[int, int, int]], calib_images: int,
                  say: Callable[[str], None]) -> dict[str, bytes]:
    """Each float export quantized to int8, calibrated on uniform random images (speed only: the
    calibrated ranges do not change the work an int8 kernel does)."""
    from .quantize import Calibration, quantize_int8

    out = {}
    for k, b in exports.items():
        say(f"quantizing {k} to int8")
        x = torch.rand(calib_images, *shapes[k], generator=torch.Generator().manual_seed(0))
        out[k + INT8_SUFFIX] = quantize_int8(b, x, Calibration(images=calib_images, seed=0, dataset="uniform random",
                                                               split="-", stratified=False))
    return out


def bench(models: dict[str, tuple[nn.Module, tuple[int, int, int]]], engines: tuple[str, ...] = DEFAULT_ENGINES,
          threads: list[int] | None = None, batch: int = 64, runs: int = 30, throughput_runs: int = 5,
          warmup: int = 3, opset: int | None = None, log: Callable[[str], None] | None = None,
          int8: bool = False, calib_images: int = 32) -> dict[str, Any]:
    """Benchmark `models` ({name: (model, (C, H, W))}): JSON-ready result with one row per model, engine, threads.

    For each engine and thread count: batch-1 latency (`runs` runs) and batch-`batch` throughput
    (`throughput_runs` runs), all models round-robin. ONNX Runtime runs each model's ONNX export
    (`export_onnx`, checked against PyTorch on random inputs before timing); with `int8` also each
    export's int8 model (`<name> int8` rows, same round-robin). `torch-deploy` runs
    `deploy_form(model)` (fused, channels_last).
    """
    from ..costs import count_macs

    if not models:
        raise ValueError("no models to benchmark")
    for e in engines:
        if e not in ENGINES:
            raise ValueError(f"unknown engine {e!r}; choose from {', '.join(ENGINES)}")
    if int8 and "onnxruntime" not in engines:
        raise ValueError("int8 models run in ONNX Runtime: add the onnxruntime engine")
    threads = threads or [1, os.cpu_count() or 1]
    if batch < 1 or runs < 1 or throughput_runs < 1 or calib_images < 1:
        raise ValueError("batch, runs and calibration images must be at least 1")
    say = log or (lambda msg: None)
    load_before = _load_average()
    macs = {k: count_macs(m, shape) for k, (m, shape) in models.items()}
    shapes = {k: shape for k, (_, shape) in models.items()}
    exports: dict[str, bytes] = {}
    checks: dict[str, dict[str, Any]] = {}
    fused: dict[str, str] = {}
    deploy: dict[str, tuple[nn.Module, tuple[int, int, int]]] = {}
    if "torch-deploy" in engines:
        from .fuse import deploy_form

        for k, (m, shape) in models.items():
            net, report = deploy_form(m)
            deploy[k], fused[k] = (net, shape), report.summary()
    if "onnxruntime" in engines:
        from .extra import require_onnx
        from .onnx_export import DEFAULT_OPSET, compare_with_torch, export_onnx

        require_onnx("ONNX Runtime benchmarks")
        for k, (m, shape) in models.items():
            say(f"exporting {k} to ONNX")
            exports[k] = export_onnx(m, shape, opset or DEFAULT_OPSET)
            checks[k] = compare_with_torch(exports[k], m, _inputs(shape, 8))
        if int8:
            for k, b in _int8_exports(dict(exports), shapes, calib_images, say).items():
                exports[k], shapes[k], macs[k] = b, shapes[k[:-len(INT8_SUFFIX)]], macs[k[:-len(INT8_SUFFIX)]]
    first = next(iter(models))
    rows: list[dict[str, Any]] = []
    for engine in engines:
        for n in threads:
            say(f"timing {ENGINE_NAMES[engine]}, {n} thread(s)")
            if engine in ("torch", "torch-deploy"):
                nets = models if engine == "torch" else deploy
                lat = torch_latencies(nets, 1, runs, warmup, threads=n)
                thr = torch_latencies(nets, batch, throughput_runs, min(warmup, 1), threads=n)
            else:
                from .onnx_export import ort_session

                sessions = {k: (ort_session(b, n), shapes[k]) for k, b in exports.items()}
                lat = ort_latencies(sessions, 1, runs, warmup)
                thr = ort_latencies(sessions, batch, throughput_runs, min(warmup, 1))
            for k in lat:
                rows.append({
                    "model": k, "engine": engine, "threads": n, "macs": macs[k],
                    "dtype": "int8" if engine == "onnxruntime" and k.endswith(INT8_SUFFIX) and k not in models
                    else "float32",
                    "file_bytes": len(exports[k]) if engine == "onnxruntime" else None,
                    "latency_b1": lat[k], "throughput": thr[k],
                    "latency_speedup": lat[first]["median_ms"] / lat[k]["median_ms"],
                    "throughput_speedup": thr[k]["images_per_s"] / thr[first]["images_per_s"],
                    "macs_ratio": macs[k] / macs[first],
                })
    names = list(models) + [k for k in exports if k not in models]
    return {
        "format": "achroma-bench/1",
        "models": {k: {"input_shape": list(shapes[k]), "macs": macs[k], "onnx_check": checks.get(k),
                       "onnx_bytes": len(exports[k]) if k in exports else None, "fused": fused.get(k)}
                   for k in names},
        "baseline": first,
        "rows": rows,
        "settings": {"engines": list(engines), "threads": threads, "latency_batch": 1, "throughput_batch": batch,
                     "runs": runs, "throughput_runs": throughput_runs, "warmup": warmup,
                     "opset": (opset or 18) if exports else None, "int8": int8,
                     "int8_calibration": f"{calib_images} uniform random images (speed only)" if int8 else None},
        "method": ("CPU; models timed round-robin (run i of every model before run i + 1 of any); "
                   "PyTorch eager under torch.inference_mode with torch.set_num_threads(n) (the deploy form: "
                   "conv+BN fused, channels_last weights and input); ONNX Runtime "
                   "CPUExecutionProvider, intra_op_num_threads=n, inter_op_num_threads=1, all graph optimizations, "
                   "int8 models static QDQ with per-channel weights; "
                   "speedups against the first model in the same engine and thread count"),
        "environment": {**_environment(), "load_average_1min": {"before": load_before, "after": _load_average()}},
    }


def _load_average() -> float | None:
    """The 1-minute load average (other programs competing for the cores), where the OS reports one."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _environment() -> dict[str, Any]:
    env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "cpu_count": os.cpu_count()}
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return env


def render_markdown(result: dict[str, Any]) -> str:
    """The bench result as a Markdown table, with how it was measured."""
    s = result["settings"]
    b = s["throughput_batch"]
    lines = [f"| model | precision | MMACs | MACs vs first | engine | threads | b=1 median (ms) | b=1 p90 (ms) | "
             f"b=1 speedup | b={b} images/s | b={b} speedup | ONNX file (MB) |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lat, thr = r["latency_b1"], r["throughput"]
        size = f"{r['file_bytes'] / 1e6:.2f}" if r.get("file_bytes") else "–"
        lines.append(f"| {r['model']} | {r.get('dtype', 'float32')} | {r['macs'] / 1e6:.2f} | {r['macs_ratio']:.2f} | "
                     f"{ENGINE_NAMES[r['engine']]} | {r['threads']} | {lat['median_ms']:.2f} | {lat['p90_ms']:.2f} | "
                     f"{r['latency_speedup']:.2f}x | {thr['images_per_s']:.0f} | {r['throughput_speedup']:.2f}x | "
                     f"{size} |")
    lines += ["", f"Speedup: against `{result['baseline']}` (the first model), same engine and threads, same run. "
              f"Latency: median and 90th percentile of {s['runs']} runs at batch 1 after {s['warmup']} warm-up runs; "
              f"throughput: from the median of {s['throughput_runs']} runs at batch {b}. {result['method']}."]
    if s.get("int8_calibration"):
        lines.append(f"int8 rows: each float export quantized here, calibrated on {s['int8_calibration']}.")
    slower = [r for r in result["rows"] if r.get("dtype") == "int8" and _float_row(result, r) is not None
              and r["latency_b1"]["median_ms"] > _float_row(result, r)["latency_b1"]["median_ms"]]
    if slower:
        lines.append("int8 slower than its float model at batch 1: " + ", ".join(
            f"{r['model']} ({r['threads']} thread(s))" for r in slower) + ".")
    checks = {k: v["onnx_check"] for k, v in result["models"].items() if v.get("onnx_check")}
    if checks:
        worst = max(c["max_abs_logit_diff"] for c in checks.values())
        lines.append(f"ONNX exports checked against PyTorch on random inputs: max |logit difference| {worst:.2e}.")
    env = dict(result["environment"])
    load = env.pop("load_average_1min", None) or {}
    lines.append("Environment: " + ", ".join(f"{k} {v}" for k, v in env.items())
                 + (f"; 1-minute load average {load.get('before')} before, {load.get('after')} after "
                    f"(other programs on the machine)." if load else "."))
    return "\n".join(lines)


def _float_row(result: dict[str, Any], row: dict[str, Any]) -> dict[str, Any] | None:
    """The float row an `<name> int8` row was quantized from (same engine and threads), if benched."""
    if not row["model"].endswith(INT8_SUFFIX):
        return None
    name = row["model"][:-len(INT8_SUFFIX)]
    return next((r for r in result["rows"] if r["model"] == name and r["engine"] == row["engine"]
                 and r["threads"] == row["threads"]), None)
