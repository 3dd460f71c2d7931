"""Write everything a `compress` run produced into one folder: model, report, clusterings, figures.

When the folder does not exist yet, everything is written into a hidden sibling first and renamed
into place at the end, so a failure leaves no half-written output folder behind.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .table import write_report


def layer_file_stem(layer: str) -> str:
    """A file-name-safe form of a module path (dots kept, other separators replaced)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in layer)


def _write_layer(out: Path, ly: Any) -> list[str]:
    from ..fields.figures import plot_clusters, plot_distance_matrix, plot_fields

    stem = layer_file_stem(ly.layer)
    names = [f"clustering-{stem}.json"]
    ly.clustering.to_json(out / names[0])
    if ly.fields is None:
        return names
    ly.fields.save(out / f"fields-{stem}.npz")
    plot_fields(ly.fields, out / f"fields-{stem}.png", kind="gray")
    what = ly.metric + (f" (r={ly.clustering.params['r']:g})" if "r" in ly.clustering.params else "")
    plot_distance_matrix(ly.distances, ly.clustering.labels, out / f"distances-{stem}.png",
                         title=f"{what} distances, layer {ly.layer}, ordered by cluster")
    plot_clusters(ly.fields, ly.clustering, out / f"clusters-{stem}.png",
                  title=f"layer {ly.layer}: {ly.channels_before} filters -> {ly.channels_after} ({what}, {ly.method})")
    return names + [f"fields-{stem}.npz", f"fields-{stem}.png", f"distances-{stem}.png", f"clusters-{stem}.png"]


def _write_all(out: Path, result: Any, report: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    from ..io import save_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "model.safetensors", result.final_model, {**result.checkpoint_meta(), **meta})
    write_report(out, report)
    names = ["model.safetensors", "model.json", "report.md", "report.json"]
    for ly in result.layers:
        names += _write_layer(out, ly)
    return names


def write_outputs(out_dir: str | Path, result: Any, report: dict[str, Any],
                  meta: dict[str, Any] | None = None) -> list[str]:
    """Write the final model (`model.safetensors` + `model.json`), `report.md`/`.json` and per layer
    `clustering-<layer>.json`, `fields-<layer>.npz/.png`, `distances-<layer>.png`, `clusters-<layer>.png`.

    `meta` is merged into the checkpoint JSON (e.g. the dataset). Returns the file names written.
    """
    out = Path(out_dir)
    if out.exists():
        return _write_all(out, result, report, meta or {})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the folder should look like any other
    try:
        names = _write_all(tmp, result, report, meta or {})
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return names
