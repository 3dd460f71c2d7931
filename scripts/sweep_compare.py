"""Rows of several sweeps side by side: one Markdown table per budget, a row per (sweep, method).

Each sweep folder is named LABEL=DIR; its `results.jsonl` points are read as they are (nothing is
recomputed). Sweeps of one model on the same data and repair budget compare; the script refuses
folders whose model, data set or test-image count differ. Cells are accuracy in %; '–' where a
sweep has no such point.

    PYTHONPATH=src python scripts/sweep_compare.py "k-means=runs/sweep-r20" "bounded=runs/sweep-r20-bounded" \
        --targets 0.5,0.3 --repairs none,ls-refit,ls-refit+distill,finetune:3
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(folder: Path) -> tuple[dict, list[dict]]:
    settings = json.loads((folder / "sweep.json").read_text())
    records = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]
    return settings, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", help="LABEL=DIR")
    parser.add_argument("--targets", default="0.5", help="budgets to show, e.g. 0.5,0.3")
    parser.add_argument("--repairs", default=None, help="repairs to show (default: the first sweep's)")
    parser.add_argument("--methods", default=None, help="methods to show (default: all)")
    args = parser.parse_args()
    sweeps = []
    for item in args.sweeps:
        label, _, folder = item.partition("=")
        settings, records = load(Path(folder))
        sweeps.append((label, settings, records))
    first = sweeps[0][1]
    for label, settings, _ in sweeps[1:]:
        for key in ("model", "dataset", "test_images", "calibration_images"):
            if settings.get(key) != first.get(key):
                raise SystemExit(f"{label}: {key} {settings.get(key)!r} differs from {first.get(key)!r}")
    repairs = args.repairs.split(",") if args.repairs else list(dict.fromkeys(r["repair"] for r in sweeps[0][2]))
    methods = args.methods.split(",") if args.methods else None
    print(f"{first['model']} on {first['dataset']}, {first['test_images']:,} test images, "
          f"{first['calibration_images']:,} repair images")
    ref = {r["repair"]: r for r in sweeps[0][2] if r["method"] == "uncompressed"}
    for target in (float(t) for t in args.targets.split(",")):
        print(f"\n{target:g} of the MACs kept\n")
        print("| sweep | method | params | MACs | " + " | ".join(repairs) + " |")
        print("|---|---|---:|---:|" + "---:|" * len(repairs))
        if ref:
            any_r = next(iter(ref.values()))
            print(f"| – | uncompressed | {any_r['params']:,} | {any_r['macs'] / 1e6:.2f}M | "
                  + " | ".join(f"{100 * ref[r]['accuracy']:.2f}" if r in ref else "–" for r in repairs) + " |")
        for label, _, records in sweeps:
            mine = [r for r in records if r["target"] == target and r["method"] != "uncompressed"]
            for method in dict.fromkeys(r["method"] for r in mine):
                if methods and method not in methods:
                    continue
                cells = {r["repair"]: r for r in mine if r["method"] == method}
                any_r = next(iter(cells.values()))
                print(f"| {label} | {method} | {any_r['params']:,} | {any_r['macs'] / 1e6:.2f}M | "
                      + " | ".join(f"{100 * cells[r]['accuracy']:.2f}" if r in cells else "–" for r in repairs)
                      + " |")


if __name__ == "__main__":
    main()
