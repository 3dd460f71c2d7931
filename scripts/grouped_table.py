"""Issue 10's tables from the runs of scripts/grouped_experiments.sh (default root runs/grouped).

Accuracies come from the runs' own records (training histories, group and compress reports);
parameters and MACs are counted again here from each saved checkpoint (FlopCounter, one image).

    python scripts/grouped_table.py runs/grouped
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from achroma.io import load_checkpoint
from achroma.report import count_macs


def costs(checkpoint: Path) -> tuple[int, int]:
    """(trainable parameters, MACs of one 32x32 image) of a saved model."""
    model, meta = load_checkpoint(checkpoint)
    in_chans = 1 if meta.get("mode") == "gray" else 3
    return sum(p.numel() for p in model.parameters() if p.requires_grad), count_macs(model.eval(), (in_chans, 32, 32))


def history(run: Path) -> list[dict]:
    return json.loads((run / "model.json").read_text())["training"]["epochs"]


def trained(run: Path) -> tuple[int, int, dict]:
    """(parameters, MACs, last epoch's record) of a `train` run's folder."""
    params, macs = costs(run / "model")
    return params, macs, history(run)[-1]


def wall_seconds(log: Path) -> float | None:
    found = re.findall(r"wall_seconds ([\d.]+)", log.read_text()) if log.is_file() else []
    return float(found[-1]) if found else None


def fmt_time(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds / 60:.1f} min"


def pair_table(root: Path) -> list[str]:
    lines = ["| model | input | params | MMACs | epochs | test accuracy | wall-clock |", "|---|---|---:|---:|---:|---:|---:|"]
    for run in sorted((root / "pair").glob("*-*")):
        if not (run / "model.json").is_file():
            continue
        name, mode = run.name.rsplit("-", 1)
        params, macs, last = trained(run)
        lines.append(f"| {name} | {mode} | {params:,} | {macs / 1e6:.1f} | {last['epoch']} | "
                     f"{last['test_accuracy']:.4f} | {fmt_time(wall_seconds(run.with_suffix('.log')))} |")
    return lines


def transform_table(root: Path) -> list[str]:
    lines = ["| model | order | repair | test accuracy | params | MMACs | wall-clock |",
             "|---|---|---|---:|---:|---:|---:|"]
    seen_dense = False
    for name in ("energy", "naive", "energy-refit"):
        run = root / "transform" / f"densenet-bc-40-color-{name}"
        if not (run / "report.json").is_file():
            continue
        report = json.loads((run / "report.json").read_text())
        order = name.split("-")[0]
        for row in report["rows"]:
            if row["key"] == "dense":
                if seen_dense:
                    continue
                seen_dense = True
                label, row_order = "densenet-bc-40 (trained, dense)", "–"
            elif row["key"] == "grouped-naive" or (name.endswith("refit") and row["key"] == "grouped"):
                continue  # each order's own run reports its unrepaired row once
            else:
                label, row_order = "grouped transform", order
            lines.append(f"| {label} | {row_order} | {row['repair']} | {row['accuracy']:.4f} | {row['params']:,} | "
                         f"{row['macs'] / 1e6:.1f} | "
                         f"{fmt_time(wall_seconds(run.with_suffix('.log'))) if row['repair'] != 'none' else ''} |")
    for run in sorted((root / "transform").glob("scratch-grouped-e*")):
        if (run / "model.json").is_file():
            params, macs, last = trained(run)
            lines.append(f"| same grouped architecture, from scratch | – | {last['epoch']} epochs | "
                         f"{last['test_accuracy']:.4f} | {params:,} | {macs / 1e6:.1f} | "
                         f"{fmt_time(wall_seconds(run.with_suffix('.log')))} |")
    return lines


def demo_table(root: Path) -> list[str]:
    d = root / "demo"
    lines = ["| model | repair / training | test accuracy | params | MMACs |", "|---|---|---:|---:|---:|"]
    for name in ("group-m16", "group-m16-refit"):
        if not (d / name / "report.json").is_file():
            continue
        for row in json.loads((d / name / "report.json").read_text())["rows"]:
            if name.endswith("refit") and row["key"] in ("dense", "grouped", "grouped-naive"):
                continue
            lines.append(f"| {row['label']} | {row['repair']} | {row['accuracy']:.4f} | {row['params']:,} | "
                         f"{row['macs'] / 1e6:.2f} |")
    run = d / "scratch-grouped-e9"
    if (run / "model.json").is_file():
        params, macs, last = trained(run)
        lines.append(f"| same grouped architecture, from scratch | {last['epoch']} epochs | {last['test_accuracy']:.4f} | "
                     f"{params:,} | {macs / 1e6:.2f} |")
    return lines


def compose_table(root: Path) -> list[str]:
    c = root / "compose"
    lines = ["| order | params | MMACs | accuracy, no repair | after 1 distill epoch |", "|---|---:|---:|---:|---:|"]
    for order, label in (("merge", "compress only (merge to 50% MACs)"), ("merge-group", "compress, then group"),
                         ("group-merge", "group, then compress")):
        if not (c / order / "report.json").is_file() or not (c / f"{order}-distill" / "model.json").is_file():
            continue
        report = json.loads((c / order / "report.json").read_text())
        key = "grouped" if order == "merge-group" else "merged"  # the group report / the compress report
        before = next(r["accuracy"] for r in report["rows"] if r["key"] == key)
        params, macs = costs(c / order / "model")
        after = history(c / f"{order}-distill")[-1]["test_accuracy"]
        lines.append(f"| {label} | {params:,} | {macs / 1e6:.2f} | {before:.4f} | {after:.4f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="runs/grouped", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for title, table in (("From scratch", pair_table), ("Transform of the trained densenet-bc-40", transform_table),
                         ("Transform of the demo model", demo_table), ("Compose on the demo model", compose_table)):
        print(f"## {title}\n")
        print("\n".join(table(args.root)) + "\n")


if __name__ == "__main__":
    main()
