"""The sweep's records as CSV, JSON and Markdown (one accuracy table per budget), plus the plots."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

from ..io import atomic_write_bytes

COLUMNS = ("target", "method", "repair", "accuracy", "loss", "n", "params", "macs", "seconds_total")


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    row = {k: record.get(k) for k in COLUMNS if k != "seconds_total"}
    row["seconds_total"] = round(sum((record.get("seconds") or {}).values()), 1)
    return row


def render_markdown(records: Sequence[dict[str, Any]], title: str = "Sweep", missing: Sequence[str] = ()) -> str:
    """One table per budget: a row per method, a column per repair (accuracy), with parameters and MACs
    relative to the uncompressed gray model. The best compressed entry of each column is bold.
    missing: ids of the grid's points not (yet) computed, named under the tables."""
    ref = next((r for r in records if r["method"] == "uncompressed"), None)
    repairs = list(dict.fromkeys(r["repair"] for r in records if r["method"] != "scratch"))
    lines = [f"# {title}", ""]
    if ref is not None:
        lines.append(f"Uncompressed gray model: {ref['params']:,} parameters, {ref['macs'] / 1e6:.2f} MMACs per image; "
                     f"{ref['n']:,} test images.")
        lines.append("")
    for target in dict.fromkeys(r["target"] for r in records):
        rows = [r for r in records if r["target"] == target]
        methods = list(dict.fromkeys(r["method"] for r in rows))
        cols = repairs + (["scratch"] if any(r["method"] == "scratch" for r in rows) else [])
        head = "uncompressed" if target == 1.0 else f"{target:g} kept"
        lines += [f"## {head}", "", "| method | params | MACs | " + " | ".join(cols) + " |",
                  "|---|---:|---:|" + "---:|" * len(cols)]
        best = {c: max((r["accuracy"] for r in rows if r["repair"] == c and r["method"] != "uncompressed"),
                       default=None) for c in repairs}
        for method in methods:
            mine = {r["repair"]: r for r in rows if r["method"] == method}
            any_r = next(iter(mine.values()))
            cells = []
            for c in cols:
                r = mine.get(c) if c != "scratch" else next(iter(mine.values())) if method == "scratch" else None
                if r is None:
                    cells.append("–")
                    continue
                text = f"{100 * r['accuracy']:.2f}"
                cells.append(f"**{text}**" if c in best and r["accuracy"] == best[c] and len(methods) > 1 else text)
            rel = (lambda k: f" ({any_r[k] / ref[k]:.1%})") if ref else (lambda k: "")
            lines.append(f"| {method} | {any_r['params']:,}{rel('params')} | {any_r['macs'] / 1e6:.2f}M{rel('macs')} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Accuracy in %, top-1 on the test images; parameters and MACs (FlopCounter) with their share of the "
                 "uncompressed gray model's; 'scratch' is the compressed architecture trained from scratch.")
    if missing:
        lines += ["", f"Not yet computed ({len(missing)} of {len(records) + len(missing)} points): "
                  + ", ".join(f"`{m}`" for m in missing) + "."]
    return "\n".join(lines) + "\n"


def write_tables(records: Sequence[dict[str, Any]], out_dir: str | Path, title: str = "Sweep",
                 missing: Sequence[str] = ()) -> list[Path]:
    """results.csv, results.json and results.md in `out_dir` (atomic), plus the Pareto plots."""
    out = Path(out_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    for r in records:
        writer.writerow(_flat(r))
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    atomic_write_bytes(out / "results.json", (json.dumps(list(records), indent=2, sort_keys=True) + "\n").encode())
    atomic_write_bytes(out / "results.md", render_markdown(records, title, missing).encode())
    from .plots import plot_pareto

    return [out / "results.csv", out / "results.json", out / "results.md", *plot_pareto(records, out, title)]
