"""`achroma demo`: the whole method on the embedded model and data, offline, in a few CPU minutes.

A small color DenseNet of the notebook's family (`seed-densenet-tiny`) and 5,000 train / 2,000
test CIFAR-10 (JPEG) images ship in `achroma/assets`. The demo folds the model to gray, merges the
first conv layer's filters (MSE between receptive fields, DBSCAN keeping about 55%), repairs it two
ways for one epoch (distillation from the color model, kept in the saved model; the notebook's
BN-only training), gives the uncompressed folded model the same repairs, and prints the table.
Then the product: the whole network at half the MACs (the budget's default selection, k-means on
the weights) with the recommended repair (one epoch of distillation), beside the uncompressed gray
model given the very same repair; that model and its report go to `whole-network/`.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

DEMO_DATA = "demo-cifar10-jpeg.tar.gz"
DEMO_MODEL = "demo-model.safetensors"
DISPLAY_NAME = "CIFAR-10 (JPEG), demo subset"
WHOLE_MACS = 0.5  # the whole-network budget: the share of the folded model's MACs kept


def whole_table(report: dict[str, Any]) -> str:
    """The whole-network rows as a short Markdown table (the report's own table, without the color rows)."""
    from .report.table import render_markdown

    table = [line for line in render_markdown(report).splitlines() if line.startswith("|")]
    keep = [line for line in table if not line.startswith("| color model")]
    head = f"## The whole network at {WHOLE_MACS:.0%} of the MACs, one epoch of distillation"
    return "\n".join([head, "", *keep[:2 + 4], ""])


def assets_dir() -> Path:
    return Path(str(files("achroma") / "assets"))


def default_model_path() -> Path:
    """The embedded demo model (`achroma/assets/demo-model.safetensors` and its .json)."""
    path = assets_dir() / DEMO_MODEL
    if not (path.is_file() and path.with_suffix(".json").is_file()):
        raise FileNotFoundError(f"demo model not found: {path} (with its .json); reinstall achroma or pass model_path")
    return path


def _check_out(out: Path) -> None:
    """Refuse a non-empty folder unless it holds an earlier demo's output (then files are replaced)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        try:
            earlier = json.loads((out / "report.json").read_text()).get("demo") is True
        except (OSError, ValueError):
            earlier = False
        if not earlier:
            raise ValueError(f"--out {out} exists and is not empty (and is not an earlier demo's output)")


def run_demo(
    out_dir: str | Path | None = None,
    model_path: str | Path | None = None,
    data_path: str | Path | None = None,
    keep: float = 0.55,
    calib_per_class: int | None = 200,
    latency: bool = True,
    progress: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run the demo; print progress (stderr) and the table (stdout); return the report dict.

    Writes the compressed model, report and figures to `out_dir` (default: a new temporary folder).
    `threads`: torch CPU threads for the run (default: every core this process may use; on a machine
    busy with other work, fewer can be faster); restored after.
    `calib_per_class`: repair images per class (default 200 of the 500 per class shipped; None for all).
    """
    import torch

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    try:
        return _run(out_dir, model_path, data_path, keep, calib_per_class, latency, progress)
    finally:
        torch.set_num_threads(saved_threads)


def _run(out_dir: str | Path | None, model_path: str | Path | None, data_path: str | Path | None, keep: float,
         calib_per_class: int | None, latency: bool, progress: bool) -> dict[str, Any]:
    import torch

    from .data import load_dataset
    from .io import load_checkpoint
    from .pipeline import Budget, CompressConfig, compress
    from .report import build_report, render_markdown, write_outputs

    start = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="achroma-demo-"))
    if out_dir is not None:
        _check_out(out)
    model_path = Path(model_path) if model_path is not None else default_model_path()
    data_path = Path(data_path) if data_path is not None else assets_dir() / DEMO_DATA

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"achroma demo: model {model_path}, data {data_path.name}, output {out}, "
        f"{torch.get_num_threads()} CPU thread(s)")
    model, meta = load_checkpoint(model_path)
    train_set = load_dataset(f"tar:{data_path}", "train")
    test_set = load_dataset(f"tar:{data_path}", "test")
    if calib_per_class:
        train_set = train_set.stratified_subset(calib_per_class)
    for data in (train_set, test_set):
        data.extra["display_name"] = DISPLAY_NAME
    config = CompressConfig(layers="first:1", metric="mse", cluster_method="dbscan", keep=keep,
                            repair="distill,bn-train", progress=progress)
    result = compress(model, meta.get("normalization", "cifar"), train_set, test_set, config, log=log)
    report = build_report(result, latency=latency, runs_b1=20, runs_b256=3, log=log)
    report["demo"] = True
    report["source"] = {"model": str(model_path), "data": str(data_path)}
    extra = {"dataset": {"name": "cifar10-jpeg-demo", "display_name": DISPLAY_NAME, "classes": list(test_set.classes)},
             "source": {"weights": str(model_path)}}
    write_outputs(out, result, report, extra)
    print(render_markdown(report))

    log("the whole network at half the MACs, repaired by one epoch of distillation")
    whole = compress(model, meta.get("normalization", "cifar"), train_set, test_set,
                     CompressConfig(repair="distill", progress=progress), budget=Budget(macs=WHOLE_MACS), log=log)
    whole_report = build_report(whole, latency=latency, runs_b1=20, runs_b256=3, log=log)
    whole_report["demo"] = True
    write_outputs(out / "whole-network", whole, whole_report, extra)
    report["whole_network"] = {"rows": whole_report["rows"], "plan": whole.settings["plan"]}
    print(whole_table(whole_report))
    print(f"wrote {out} in {time.perf_counter() - start:.0f} s: model.safetensors (the gray compressed model; "
          f"`achroma evaluate --weights {out / 'model.safetensors'} --dataset tar:{data_path} --mode gray`), "
          "report.md, report.json, clustering and figures")
    return report
