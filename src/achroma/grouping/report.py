"""The report of a grouped pointwise transform, in the shape of `compress`'s report.

Rows as in `report.table` (model, input, repair, accuracy, parameters, MACs per image, relative to
the dense model), then one row per converted layer (channels, groups, parameters and MACs before
and after, the kept energy of the chosen and of the naive channel order). Totals are measured on
the whole models (parameters: `model.parameters()`; MACs: torch's FlopCounter, `achroma.costs`),
and the per-layer closed forms must add up to the measured difference (checked, reported).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from ..costs import MACS_METHOD, count_macs
from .plan import LayerPlan


def count_params(model: nn.Module) -> int:
    """Trainable and frozen parameters, not BN running statistics (as `compress`'s report counts)."""
    return sum(p.numel() for p in model.parameters())


def build_group_report(dense: nn.Module, grouped: nn.Module, plans: Sequence[LayerPlan],
                       input_shape: tuple[int, int, int], rows: Sequence[dict[str, Any]],
                       settings: dict[str, Any], model_name: str | None = None,
                       dataset: str | None = None) -> dict[str, Any]:
    """JSON-ready report. `rows`: dicts with key, label, mode, repair, accuracy and `arch` ('dense' or
    'grouped', whose measured costs the row gets)."""
    costs = {"dense": {"params": count_params(dense), "macs": count_macs(dense, input_shape)},
             "grouped": {"params": count_params(grouped), "macs": count_macs(grouped, input_shape)}}
    out_rows = [{**{k: v for k, v in r.items() if k != "arch"}, **costs[r["arch"]]} for r in rows]
    layers = [p.summary() for p in plans]
    closed = {"params": sum(ly["params_before"] - ly["params_after"] for ly in layers),
              "macs": sum((ly["macs_before"] or 0) - (ly["macs_after"] or 0) for ly in layers)}
    measured = {k: costs["dense"][k] - costs["grouped"][k] for k in ("params", "macs")}
    energy = [(p.kept_energy, p.naive_kept_energy, p.dense_params) for p in plans]
    weight = sum(w for _, _, w in energy) or 1
    return {
        "format": "achroma-group-report/1",
        "model": model_name,
        "dataset": dataset,
        "input_shape": list(input_shape),
        "rows": out_rows,
        "layers": layers,
        "totals": {
            "layers": len(plans),
            "pointwise_params_before": sum(ly["params_before"] for ly in layers),
            "pointwise_params_after": sum(ly["params_after"] for ly in layers),
            "pointwise_macs_before": sum(ly["macs_before"] or 0 for ly in layers),
            "pointwise_macs_after": sum(ly["macs_after"] or 0 for ly in layers),
            "removed_closed_form": closed, "removed_measured": measured,
            "closed_form_matches": closed == measured,
            "kept_energy_weighted": sum(k * w for k, _, w in energy if k is not None) / weight,
            "naive_kept_energy_weighted": sum(n * w for _, n, w in energy if n is not None) / weight,
        },
        "costs": {"macs": MACS_METHOD, "per_architecture": costs},
        "settings": settings,
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads()},
    }


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def _rel(v: float, ref: float) -> str:
    return "" if ref == 0 or v == ref else f" ({100 * (v - ref) / ref:+.1f}%)"


def render_group_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the model table, the per-layer table, totals, how it was measured."""
    s, t = report["settings"], report["totals"]
    dense = report["costs"]["per_architecture"]["dense"]
    lines = [f"# Grouped pointwise report: {report['model'] or 'model'}"
             + (f" on {report['dataset']}" if report["dataset"] else ""), ""]
    lines.append(f"{t['layers']} dense 1x1 conv(s) made grouped (min {s['min_channels']} channels per group, "
                 f"{s['rule']} rule" + (f", {s['groups']} groups forced" if s.get("groups") else "")
                 + f"), channel order: {s['order']}; repair: {s['repair']}"
                 + (f" ({s['epochs']} epoch(s), lr {s['lr']}, batch {s['batch_size']}, {s['distill_loss']} loss on the "
                    f"dense model's logits, then BN statistics re-estimated)" if s["repair"] == "distill" else "")
                 + ".")
    if s.get("test_images"):
        lines.append(f"Test images: {s['test_images']:,}; repair images: {s.get('repair_images') or 0:,}.")
    lines += ["", "| model | input | repair | accuracy | parameters | MMACs / image |", "|---|---|---|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['label']} | {r['mode']} | {r['repair']} | {_pct(r['accuracy'])} | "
                     f"{r['params']:,}{_rel(r['params'], dense['params'])} | "
                     f"{r['macs'] / 1e6:.3f}{_rel(r['macs'], dense['macs'])} |")
    lines += ["", "Percentages beside parameters and MACs are relative to the dense model.", "",
              "## Layers", "",
              "| layer | in -> out | stride | groups | parameters | MACs / image | kept energy (this order) | "
              "kept energy (naive order) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for ly in report["layers"]:
        macs = ("–" if ly["macs_before"] is None else f"{ly['macs_before']:,} -> {ly['macs_after']:,}")
        lines.append(f"| {ly['layer']} | {ly['in_channels']} -> {ly['out_channels']} | {ly['stride']} | {ly['groups']} | "
                     f"{ly['params_before']:,} -> {ly['params_after']:,} | {macs} | {_pct(ly['kept_energy'])} | "
                     f"{_pct(ly['naive_kept_energy'])} |")
    lines.append(f"| **total** | | | | {t['pointwise_params_before']:,} -> {t['pointwise_params_after']:,} | "
                 f"{t['pointwise_macs_before']:,} -> {t['pointwise_macs_after']:,} | "
                 f"{_pct(t['kept_energy_weighted'])} | {_pct(t['naive_kept_energy_weighted'])} |")
    closed, measured = t["removed_closed_form"], t["removed_measured"]
    lines += ["", "## How this was measured", "",
              "- Accuracy: top-1 on the test images, in the model's own input mode and normalization.",
              "- Parameters: trainable and frozen parameters, not BN running statistics.",
              f"- Compute: {report['costs']['macs']}. Per layer: closed forms (weights x output pixels); "
              f"removed in all, closed form {closed['params']:,} parameters and {closed['macs']:,} MACs, measured "
              f"{measured['params']:,} and {measured['macs']:,}"
              + (" (equal)." if t["closed_form_matches"] else " (they differ: a layer is counted wrongly)."),
              "- Kept energy: the share of the dense 1x1 weight's squared entries inside the grouped conv's block "
              "diagonal (what the grouped conv starts from); the total row weights layers by their dense size.",
              ""]
    return "\n".join(lines)
