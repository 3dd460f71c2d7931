"""What `achroma transfer` writes: the fine-tuned checkpoint (with the input geometry it was trained
on), report.md and report.json (metrics, costs, seconds, settings, caveats), confusion.png."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes, atomic_write_json, save_checkpoint
from ..report.metrics import plot_confusion
from .run import TransferResult


def render_markdown(result: TransferResult, title: str) -> str:
    """The report: one table of the test metrics and costs, the confusion matrix, notes, seconds."""
    m, c, s = result.metrics, result.costs, result.settings
    auc = f"{m['auc']:.4f} ({m['auc_kind']})" if m["auc"] is not None else "n/a (one class in the test labels)"
    cost = "MACs" if s["by"] == "macs" else "parameters"
    lines = [f"# {title}", "",
             f"Start: **{s['start']}**" + (f", merged to {s['target']:g} of the {cost}" if s["target"] else "")
             + f"; {s['epochs']} epoch(s) of {s['optimizer']} (lr {s['lr']:g}, cosine), batch {s['batch_size']}, "
             f"class weights {s['class_weights']}; input {s['geometry']['fit']} to {s['geometry']['size'] or 'native'}"
             f"; {s['train_images']:,} train / {s['val_images']:,} validation / {s['test_images']:,} test images.", "",
             "| metric | value |", "|---|---:|",
             f"| accuracy | {m['accuracy']:.4f} |", f"| balanced accuracy | {m['balanced_accuracy']:.4f} |",
             f"| ROC AUC | {auc} |", f"| parameters | {c['params']:,} |", f"| MACs per image | {c['macs']:,} |"]
    if "latency_b1_ms" in c:
        lines.append(f"| CPU latency, batch 1 ({c['latency_threads']} thread(s)) | {c['latency_b1_ms']:.2f} ms |")
    best = result.history.get("best_epoch")
    if best is not None:
        by = result.history.get("select_by", "accuracy").replace("_", " ")
        lines.append(f"| best epoch (validation {by} {result.history['best_val_score']:.4f}) | {best} |")
    lines += ["", "Confusion matrix (rows: true class, columns: predicted):", "",
              "| | " + " | ".join(m["classes"]) + " |", "|---" * (len(m["classes"]) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(str(v) for v in row) + " |" for name, row in zip(m["classes"], m["confusion"])]
    lines += ["", "Seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items())]
    if result.notes:
        lines += ["", "Notes:", *[f"- {n}" for n in result.notes]]
    return "\n".join(lines) + "\n"


def write_outputs(out: str | Path, result: TransferResult, meta: dict[str, Any], title: str) -> list[str]:
    """Write the checkpoint, the report and the confusion figure into `out`; returns the file names."""
    out = Path(out)
    ckpt_meta = {**meta, "mode": result.mode, "normalization": result.normalization,
                 "input": result.settings["geometry"], "transfer": result.summary()}
    save_checkpoint(out / "model", result.model, ckpt_meta)
    atomic_write_json(out / "report.json", {"title": title, **result.summary(), **meta})
    atomic_write_bytes(out / "report.md", render_markdown(result, title).encode())
    plot_confusion(result.metrics, out / "confusion.png", title)
    return ["model.safetensors", "model.json", "report.md", "report.json", "confusion.png"]
