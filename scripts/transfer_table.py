"""Issue 11's tables from the runs of scripts/transfer_experiments.sh, and the headline checked.

Reads runs/transfer/<dataset>/<source>/<row>-e<epochs>/report.json. With --latency, the batch-1 CPU
latency of every (source, row) model is measured again here, round-robin in one pass on 1 thread,
so the column compares models under the same load (the runs' own figures were taken while other
jobs shared the machine).

    python scripts/transfer_table.py runs/transfer/pneumoniamnist --latency
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROWS = {"scratch": "(1) from scratch, 1 channel", "gray3": "(2) color model, gray x3", "fold": "(3) folded gray",
        "merge50": "(4) folded + merged to 50% MACs"}
PUBLISHED = [("ResNet-18 (28)", 0.854, 0.944), ("ResNet-50 (28)", 0.854, 0.948), ("Google AutoML Vision", 0.946, 0.991)]


def runs(root: Path) -> list[dict]:
    found = []
    for path in sorted(root.glob("*/*-e*/report.json")):
        row, epochs = re.fullmatch(r"(\w+)-e(\d+)", path.parent.name).groups()
        report = json.loads(path.read_text())
        found.append({"source": path.parent.parent.name, "row": row, "epochs": int(epochs), "dir": path.parent,
                      "report": report})
    return found


def latencies(found: list[dict], runs_per_model: int) -> dict[tuple[str, str], float]:
    """Median batch-1 latency (ms) per (source, row), all models timed round-robin in one pass."""
    import torch

    from achroma.io import load_checkpoint
    from achroma.deploy.latency import measure_latencies

    torch.set_num_threads(1)
    models = {}
    for r in found:
        key = (r["source"], r["row"])
        if key not in models:
            model, meta = load_checkpoint(r["dir"] / "model")
            size = meta["input"]["size"] or 28
            models[key] = (model.eval(), (3 if meta["mode"] == "gray3" else 1, size, size))
    timed = measure_latencies({f"{s}|{w}": m for (s, w), m in models.items()}, batch=1, runs=runs_per_model)
    return {tuple(k.split("|")): v["median_ms"] for k, v in timed.items()}


def table(found: list[dict], lat: dict | None) -> None:
    print("| source model | start | epochs | accuracy | balanced acc. | ROC AUC | parameters | MACs | "
          + ("CPU latency b=1 | " if lat else "") + "wall-clock |")
    print("|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if lat else "") + "---:|")
    order = {k: i for i, k in enumerate(ROWS)}
    for r in sorted(found, key=lambda r: (r["source"] != "resnet-cifar-20", r["epochs"], order[r["row"]])):
        m, c, t = r["report"]["metrics"], r["report"]["costs"], r["report"]["timings"]
        cells = [r["source"], ROWS[r["row"]], str(r["epochs"]), f"{m['accuracy']:.4f}", f"{m['balanced_accuracy']:.4f}",
                 f"{m['auc']:.4f}", f"{c['params']:,}", f"{c['macs'] / 1e6:.1f} M"]
        if lat:
            cells.append(f"{lat[(r['source'], r['row'])]:.2f} ms")
        cells.append(f"{sum(t.values()):.0f} s")
        print("| " + " | ".join(cells) + " |")


def headline(found: list[dict]) -> None:
    """At the same epochs: (3) and (4) at least (1); (4) within 1 point of (3)."""
    acc = {(r["source"], r["epochs"], r["row"]): r["report"]["metrics"]["accuracy"] for r in found}
    for source, epochs in sorted({(s, e) for s, e, _ in acc}):
        got = {row: acc.get((source, epochs, row)) for row in ROWS}
        if None in (got["scratch"], got["fold"], got["merge50"]):
            continue
        a = got["fold"] >= got["scratch"] and got["merge50"] >= got["scratch"]
        b = got["fold"] - got["merge50"] <= 0.01
        print(f"- {source}, {epochs} epoch(s): (3) {got['fold']:.4f} and (4) {got['merge50']:.4f} vs (1) "
              f"{got['scratch']:.4f}: {'reached' if a else 'NOT reached'}; (4) vs (3): "
              f"{(got['merge50'] - got['fold']) * 100:+.2f} points: {'at most 1 point below (3): reached' if b else 'more than 1 point below (3): NOT reached'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="runs/transfer/<dataset>")
    p.add_argument("--latency", action="store_true", help="re-time every model round-robin (1 thread, batch 1)")
    p.add_argument("--runs", type=int, default=30)
    args = p.parse_args()
    found = runs(Path(args.root))
    if not found:
        raise SystemExit(f"no runs under {args.root}")
    table(found, latencies(found, args.runs) if args.latency else None)
    print()
    headline(found)
    if "pneumonia" in args.root:
        print("\nPublished MedMNIST v2 figures for PneumoniaMNIST (official training split of 4,708 images):")
        for name, a, auc in PUBLISHED:
            print(f"- {name}: ACC {a:.3f}, AUC {auc:.3f}")
    notes = {n for r in found for n in r["report"].get("notes", [])}
    for n in sorted(notes):
        print(f"- note: {n}")


if __name__ == "__main__":
    main()
