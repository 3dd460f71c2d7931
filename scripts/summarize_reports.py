"""One Markdown table from several `achroma compress` reports: a row per run, accuracy per repair.

    python scripts/summarize_reports.py runs/compress-demo/*/report.json

Columns: filters per merged layer, parameters and MACs relative to the folded gray model, then the
accuracy of the merged model and of the uncompressed folded model given the same repair (and
their difference in points), for each repair the run made.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def summarize(paths: list[Path]) -> str:
    reports = [(p.parent.name, json.loads(p.read_text())) for p in paths]
    repairs = [r for r in reports[0][1]["repairs"] if r != "none"]
    head = ["run", "layers (filters)", "params", "MACs", "merged, no repair"]
    for kind in repairs:
        head += [f"merged + {kind}", f"uncompressed + {kind}", "Δ points"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    first = reports[0][1]
    rows = {r["key"]: r for r in first["rows"]}
    lines.insert(0, f"{first['model']} on {first['dataset']}: color {_pct(rows['color']['accuracy'])}%, gray x3 "
                    f"{_pct(rows['color-gray3']['accuracy'])}%, folded gray {_pct(rows['folded']['accuracy'])}% "
                    f"({first['settings']['test_images']:,} test images; repairs on "
                    f"{first['settings']['calibration_images']:,} training images)\n")
    for name, rep in reports:
        rows = {r["key"]: r for r in rep["rows"]}
        folded = rows["folded"]
        layers = ", ".join(f"{ly['layer']} {ly['filters_before']}->{ly['filters_after']} ({ly['metric']})"
                           for ly in rep["layers"])
        cells = [name, layers, f"{100 * (rows['merged']['params'] / folded['params'] - 1):+.1f}%",
                 f"{100 * (rows['merged']['macs'] / folded['macs'] - 1):+.1f}%", _pct(rows["merged"]["accuracy"])]
        for kind in repairs:
            m, f = rows.get(f"merged+{kind}"), rows.get(f"folded+{kind}")
            if m is None or f is None:
                cells += ["–", "–", "–"]
                continue
            cells += [_pct(m["accuracy"]), _pct(f["accuracy"]), f"{100 * (m['accuracy'] - f['accuracy']):+.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reports", nargs="+", type=Path, help="report.json files of achroma compress")
    print(summarize(p.parse_args().reports))


if __name__ == "__main__":
    main()
