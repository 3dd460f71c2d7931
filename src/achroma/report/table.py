"""The notebook's Table 3 for one `compress` run, plus the row it lacks, as a JSON dict and Markdown.

Rows: the color model on color and on gray images, the folded gray model, the merged model before
and after repair, and the uncompressed folded model given the same repair. Columns: accuracy,
parameters, MACs per image, CPU latency at batch 1 and 256. Costs are measured once per distinct
architecture (a repair changes BN values, never shapes or work).
"""
from __future__ import annotations

import platform
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ..costs import MACS_METHOD, count_macs
from ..deploy.latency import measure_latencies

def _arch(model_key: str) -> str:
    """The model whose costs a row has: 'merged+distill' -> 'merged' (a repair never changes shapes)."""
    return model_key.split("+", 1)[0]


def build_report(result: Any, latency: bool = True, runs_b1: int = 20, runs_b256: int = 5, warmup: int = 2,
                 log: Any = None) -> dict[str, Any]:
    """JSON-ready report of a `CompressionResult`: rows with accuracy and costs, clusterings, settings."""
    size = int(result.settings["fields"]["size"])
    nets = {key: (result.models[key], (3 if key == "color" else 1, size, size))
            for key in ("color", "folded", "merged")}
    costs: dict[str, dict[str, Any]] = {key: {"macs": count_macs(m, shape)} for key, (m, shape) in nets.items()}
    if latency:
        b1 = measure_latencies(nets, 1, runs=runs_b1, warmup=warmup)
        b256 = measure_latencies(nets, 256, runs=runs_b256, warmup=min(warmup, 1))
        for key, entry in costs.items():
            entry["latency_b1"], entry["latency_b256"] = b1[key], b256[key]
            if log is not None:
                log(f"latency {key}: {b1[key]['median_ms']:.2f} ms at batch 1, {b256[key]['median_ms']:.1f} ms at "
                    f"batch 256 ({torch.get_num_threads()} threads)")
    rows = []
    for row in result.rows:
        c = costs[_arch(row.model)]
        rows.append({**row.to_dict(), "macs": c["macs"],
                     "latency_ms_b1": c["latency_b1"]["median_ms"] if latency else None,
                     "latency_ms_b256": c["latency_b256"]["median_ms"] if latency else None})
    return {
        "format": "achroma-compress-report/1",
        "dataset": result.dataset,
        "model": result.model_name,
        "rows": rows,
        "layers": [ly.summary() for ly in result.layers],
        "repairs": list(result.repairs),
        "final_model": result.final_key,
        "fold": result.fold.to_dict(),
        "settings": result.settings,
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "stage_seconds": stage_seconds(result.timings),
        "costs": {
            "macs": MACS_METHOD,
            "latency": (f"CPU, median of {runs_b1} runs at batch 1 and {runs_b256} at batch 256 after warm-up, the "
                        f"three architectures timed round-robin, torch.inference_mode, float32, "
                        f"{torch.get_num_threads()} thread(s)") if latency else None,
            "threads": torch.get_num_threads(),
            "per_architecture": costs,
        },
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "processor": platform.processor() or None},
    }


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def _ms(v: float | None) -> str:
    return "–" if v is None else (f"{v:.2f}" if v < 100 else f"{v:.0f}")


def _rel(v: float, ref: float) -> str:
    return "" if ref == 0 or v == ref else f" ({100 * (v - ref) / ref:+.1f}%)"


def _matched_summary(rows: list[dict[str, Any]]) -> list[str]:
    """One line per repair: the compressed model against the uncompressed one with the same repair."""
    by_key = {r["key"]: r for r in rows}
    out = []
    for r in rows:
        if not r["key"].startswith("merged+"):
            continue
        kind = r["repair"]
        ref = by_key.get(f"folded+{kind}")
        if ref is None or r["accuracy"] is None or ref["accuracy"] is None:
            continue
        change = lambda a, b: f"{100 * (a - b) / b:+.1f}%" if b else "–"  # noqa: E731
        out.append(f"- At matched repair ({kind}): merged {_pct(r['accuracy'])} vs uncompressed "
                   f"{_pct(ref['accuracy'])} "
                   f"({100 * (r['accuracy'] - ref['accuracy']):+.2f} points), parameters "
                   f"{change(r['params'], ref['params'])}, MACs {change(r['macs'], ref['macs'])}.")
    return out + ([""] if out else [])


def _selection_line(s: dict) -> str:
    """How the channels were chosen; the receptive fields' settings only when they were computed."""
    if s.get("selection") not in (None, "fields"):
        return f"- Selection: {s['selection']}, seed {s['seed']}."
    return (f"- Receptive fields: {s['fields'].get('steps')} ascent steps, {s['fields'].get('restarts')} restart(s), "
            f"seed {s['seed']}, computed " + ("in the color model (luma), as the notebook did"
                                               if s.get("fields_from") == "color" else
                                               "in the gray model as merged so far") + ".")


def stage_seconds(timings: dict[str, float]) -> dict[str, float]:
    """Seconds per pipeline stage, summed over layers: 'fields conv1' + 'fields conv2' -> 'fields'. Repairs
    keep their name ('repair merged+bn-train'), as each is a cost a user chooses."""
    out: dict[str, float] = {}
    for key, value in timings.items():
        stage = key if key.startswith("repair ") else key.split(" ", 1)[0]
        out[stage] = round(out.get(stage, 0.0) + value, 3)
    return out


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the table, the clustering per layer, how things were measured."""
    s = report["settings"]
    rc = s["repair_config"]
    folded = next(r for r in report["rows"] if r["key"] == "folded")
    lines = [f"# Compression report: {report['model'] or 'model'} on {report['dataset']}", ""]
    lines.append(f"Test images: {s['test_images']:,} of {report['dataset']}. Repair data: {s['calibration_images']:,} "
                 f"training images (gray). Layers merged, in order: {', '.join(s['layers'])}.")
    repairs = {step.split(":")[0] for k in report["repairs"] for step in k.split("+") if step != "none"}
    if repairs:
        lines.append(f"Repair budget, the same for the merged and the uncompressed folded model: bn-train = "
                     f"{rc['epochs']} epoch(s) of SGD on the BN affine parameters only (lr {rc['lr']}, momentum "
                     f"{rc['momentum']}, batch {rc['batch_size']}); bn-stats = BN running statistics re-estimated "
                     f"(batch {rc['stats_batch_size']}"
                     + (", crop + flip as in training" if rc.get("stats_augment") else ", plain images")
                     + "), no gradient step"
                     + (f"; distill = {rc['epochs']} epoch(s) of SGD on every weight (lr {rc.get('distill_lr')}, "
                        f"momentum 0.9, cosine, batch {rc['batch_size']}) regressing the color model's logits "
                        f"({rc.get('distill_loss')} loss) on the same images, then BN statistics re-estimated on them" if "distill" in repairs else "")
                     + (f"; ls-refit = the layers reading merged channels refit by ridge least squares (ridge "
                        f"{rc.get('refit_ridge')}) to the uncompressed gray model's outputs on "
                        f"{min(rc.get('refit_images') or 0, s['calibration_images']):,} of those images, no training "
                        "(nothing to refit in the uncompressed model)"
                        if "ls-refit" in repairs else "")
                     + (f"; finetune = every weight trained on the labels (SGD lr {rc.get('finetune_lr')}, momentum "
                        f"0.9, weight decay {rc.get('finetune_weight_decay')}, cosine, batch "
                        f"{rc.get('finetune_batch_size')}, crop + flip), finetune-kd adds Hinton KD from the color "
                        f"model (T {rc.get('kd_temperature')}, soft weight {rc.get('kd_alpha')})"
                        if repairs & {"finetune", "finetune-kd"} else "")
                     + "; a+b = a, then b; a:N = a for N epochs.")
    lines += ["", "| model | input | repair | accuracy | parameters | MMACs / image | latency b=1 (ms) | "
              "latency b=256 (ms) |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['label']} | {r['mode']} | {r['repair']} | {_pct(r['accuracy'])} | "
                     f"{r['params']:,}{_rel(r['params'], folded['params'])} | "
                     f"{r['macs'] / 1e6:.2f}{_rel(r['macs'], folded['macs'])} | {_ms(r['latency_ms_b1'])} | "
                     f"{_ms(r['latency_ms_b256'])} |")
    lines += ["", "Percentages beside parameters and MACs are relative to the folded gray model.", ""]
    lines += _matched_summary(report["rows"])
    lines += [
              "## Clustering", "", "| layer | metric | method | eps | keep | filters |", "|---|---|---|---:|---:|---:|"]
    for ly in report["layers"]:
        eps = "–" if ly["eps"] is None else f"{ly['eps']:.4g}"
        keep = "–" if ly["keep"] is None else f"{ly['keep']:g}"
        lines.append(f"| {ly['layer']} | {ly['metric'] or ('given' if ly.get('source') == 'given' else '–')} | {ly['method']} | {eps} | {keep} | "
                     f"{ly['filters_before']} -> {ly['filters_after']} |")
    fold = report["fold"]
    lines += ["", "## How this was measured", "",
              f"- Accuracy: top-1 on the {s['test_images']:,} test images; the color model sees normalized color "
              f"images or the gray image copied to 3 channels; gray models see raw [0, 1] gray "
              f"(0.2989 R + 0.5870 G + 0.1140 B).",
              "- Parameters: trainable and frozen parameters, not BN running statistics.",
              f"- Compute: {report['costs']['macs']}."]
    if report["costs"]["latency"]:
        lines.append(f"- Latency: {report['costs']['latency']}; shared machines make these noisy.")
    lines += [f"- Fold: first conv {fold['layer']}, border={fold['border']}, max |logit difference| color-on-gray3 vs "
              f"folded {fold['max_abs_logit_diff']:.2e} on a random probe.",
              _selection_line(s) + f" Final model: {report['final_model']}.",
              ""]
    lines += _guard_lines(s.get("guard") or {})
    lines += _choice_lines(s.get("repair_choices") or {})
    stages = report.get("stage_seconds") or {}
    if stages:
        lines += ["## Time per stage", "", "| stage | seconds |", "|---|---:|"]
        lines += [f"| {stage} | {sec:.1f} |" for stage, sec in stages.items()]
        lines.append("")
    return "\n".join(lines)


def _guard_lines(guards: dict[str, Any]) -> list[str]:
    """The guard's section: each trained repair's stages on the held-out images, and the stage kept."""
    if not guards:
        return []
    lines = ["## Guard", "", "Every stage of a repair that trains, scored on repair images held out of it; the "
             "model kept is the best stage.", "", "| model | held out | stages (accuracy) | kept |", "|---|---:|---|---|"]
    for key, g in guards.items():
        stages = ", ".join(f"{st['stage']} {st['accuracy']:.2%}" for st in g["stages"])
        kept = g["kept"] + (" (a later step made it worse)" if g["kept"] != key.split("+", 1)[1] else "")
        lines.append(f"| {key} | {g['images']:,} | {stages} | {kept} |")
    return lines + [""]


def _choice_lines(choices: dict[str, Any]) -> list[str]:
    """What the repairs set to 'auto' chose: the distillation's learning rate, the refit's ridges."""
    if not choices:
        return []
    lines = ["## Automatic choices", "", "| model | choice |", "|---|---|"]
    for key, notes in choices.items():
        parts = []
        if "distill_lr" in notes:
            parts.append(f"distillation learning rate {notes['distill_lr']:.3g} (range test)")
        if "refit_ridges" in notes:
            counts = Counter(notes["refit_ridges"].values())
            parts.append("refit ridge " + ", ".join(f"{r:g} in {n} layers" for r, n in sorted(counts.items()))
                         + " (held-out error)")
        lines.append(f"| {key} | {'; '.join(parts) or notes} |")
    return lines + [""]


def write_report(out_dir: str | Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """`report.json` and `report.md` in `out_dir` (atomic writes)."""
    from ..io import atomic_write_bytes, atomic_write_json

    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_bytes(out_dir / "report.md", render_markdown(report).encode())
    return out_dir / "report.json", out_dir / "report.md"
