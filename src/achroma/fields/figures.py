"""PNG figures of receptive fields, distance matrices and clusterings (matplotlib, Agg canvas).

Figures are built on `matplotlib.figure.Figure` with an Agg canvas, never through pyplot, so
no global figure state or GUI backend is involved.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

#: Perceptual blue-to-yellow map, like the blog's pseudo-color gray fields.
GRAY_CMAP = "cividis"


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write the PNG atomically (render to memory, then temp file + rename)."""
    import io

    from ..io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _grid_shape(n: int, max_cols: int = 12) -> tuple[int, int]:
    """Rows and columns of a near-square grid for n tiles (at most `max_cols` wide)."""
    cols = min(max_cols, max(1, math.ceil(math.sqrt(n))))
    return math.ceil(n / cols), cols


def _gray_limits(gray: np.ndarray) -> tuple[float, float]:
    """A color scale shared by all tiles: the 1st..99th percentile of all gray values."""
    lo, hi = np.percentile(gray, [1, 99])
    return (float(lo), float(hi)) if hi > lo else (float(lo) - 0.5, float(lo) + 0.5)


def _tile_axes(fig: Any, rows: int, cols: int, top: float, bottom: float, left: float = 0.02,
               right: float = 0.98) -> Any:
    fig.subplots_adjust(left=left, right=right, top=top, bottom=bottom, wspace=0.08, hspace=0.3)
    return fig.subplots(rows, cols, squeeze=False)


def _title(rf: Any, what: str) -> str:
    p = rf.params
    bits = [f"{what}: layer {rf.layer}", f"{rf.n_filters} filters"]
    if "steps" in p:
        bits.append(f"{p['steps']} steps, {p.get('restarts', 1)} restart(s), seed {p.get('seed')}")
    return " · ".join(bits)


def plot_fields(rf: Any, path: str | os.PathLike, kind: str = "color", title: str | None = None) -> Path:
    """Grid of one layer's fields: kind 'color' (RGB) or 'gray' (pseudo-color luma, with a colorbar)."""
    if kind not in ("color", "gray"):
        raise ValueError(f"kind must be 'color' or 'gray'; got {kind!r}")
    n = rf.n_filters
    rows, cols = _grid_shape(n)
    tile = 1.0
    width, height = cols * tile + (0.9 if kind == "gray" else 0.2), rows * tile + 0.7
    fig = _new_figure(width, height)
    top = 1 - 0.55 / height
    axes = _tile_axes(fig, rows, cols, top=top, bottom=0.05 / height,
                      right=1 - (0.9 / width if kind == "gray" else 0.02))
    vmin, vmax = _gray_limits(rf.gray)
    image = None
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        if kind == "color":
            ax.imshow(rf.color[i], interpolation="nearest")
        else:
            image = ax.imshow(rf.gray[i], cmap=GRAY_CMAP, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(str(i), fontsize=7, pad=2)
    if kind == "gray" and image is not None:
        cax = fig.add_axes([1 - 0.75 / width, 0.1, 0.18 / width, top - 0.15])
        bar = fig.colorbar(image, cax=cax)
        bar.set_label("luma", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    fig.suptitle(title or _title(rf, "receptive fields" + (" (luma)" if kind == "gray" else "")),
                 fontsize=8, y=1 - 0.12 / height, va="top")
    return _save(fig, path)


def cluster_order(labels: Sequence[int]) -> np.ndarray:
    """Filter indices sorted by cluster (stable, so members keep their order)."""
    return np.argsort(np.asarray(labels), kind="stable")


def plot_distance_matrix(dist: np.ndarray, labels: Sequence[int] | None, path: str | os.PathLike,
                         title: str = "distances") -> Path:
    """Heat map of the distance matrix, rows and columns ordered by cluster, clusters outlined."""
    dist = np.asarray(dist, dtype=np.float64)
    n = dist.shape[0]
    labels = np.zeros(n, dtype=int) if labels is None else np.asarray(labels)
    order = cluster_order(labels)
    side = min(9.0, max(4.0, 0.16 * n + 2.0))
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_axes([0.1, 0.1, 0.72 * side / (side + 1.0), 0.8])
    image = ax.imshow(dist[np.ix_(order, order)], cmap="magma_r", interpolation="nearest")
    sorted_labels = labels[order]
    start = 0
    for k in range(1, n + 1):
        if k == n or sorted_labels[k] != sorted_labels[start]:
            if k - start > 1:
                ax.add_patch(_rect(start - 0.5, start - 0.5, k - start, k - start))
            start = k
    if n <= 64:
        ticks = np.arange(n)
        fontsize = 7 if n <= 40 else 5
        ax.set_xticks(ticks, [str(i) for i in order], fontsize=fontsize, rotation=90)
        ax.set_yticks(ticks, [str(i) for i in order], fontsize=fontsize)
    ax.set_xlabel("filter (ordered by cluster)", fontsize=8)
    ax.set_title(title, fontsize=9)
    cax = fig.add_axes([0.1 + 0.72 * side / (side + 1.0) + 0.02, 0.1, 0.025, 0.8])
    fig.colorbar(image, cax=cax).ax.tick_params(labelsize=7)
    return _save(fig, path)


def _rect(x: float, y: float, w: float, h: float, color: str = "#00a0ff", lw: float = 1.5) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, fill=False, edgecolor=color, linewidth=lw)


def plot_clusters(rf: Any, clustering: Any, path: str | os.PathLike, title: str | None = None,
                  max_cols: int = 12) -> Path:
    """The fields grouped by cluster: one row per multi-member cluster, then the singletons.

    Tiles show the luma fields in pseudo-color on one shared scale, captioned with the filter
    index; a cluster's representative is marked with a star and framed.
    """
    labels = np.asarray(clustering.labels)
    reps = set(int(r) for r in clustering.representatives)
    groups = [np.flatnonzero(labels == k).tolist() for k in range(int(clustering.n_clusters))]
    multi = sorted((g for g in groups if len(g) > 1), key=lambda g: (-len(g), g[0]))
    singles = sorted(g[0] for g in groups if len(g) == 1)
    cols = max([min(len(g), max_cols) for g in multi] + [min(len(singles), max_cols), 1])
    # (row caption, members) for each grid row; long groups wrap onto continuation rows
    rows: list[tuple[str, list[int], bool]] = []  # (caption, members, marks representatives)
    for k, g in enumerate(multi):
        for j in range(0, len(g), cols):
            rows.append((f"cluster {k + 1}\n{len(g)} filters" if j == 0 else "", g[j:j + cols], True))
    for j in range(0, len(singles), cols):
        rows.append((f"singletons\n{len(singles)}" if j == 0 else "", singles[j:j + cols], False))
    label_w, tile = 1.1, 0.8
    width, height = label_w + cols * tile + 0.8, len(rows) * tile + 0.7
    fig = _new_figure(width, height)
    top = 1 - 0.55 / height
    axes = _tile_axes(fig, len(rows), cols, top=top, bottom=0.05 / height, left=label_w / width,
                      right=1 - 0.8 / width)
    vmin, vmax = _gray_limits(rf.gray)
    image = None
    for r, (caption, members, mark) in enumerate(rows):
        if caption:
            axes[r, 0].text(-0.15, 0.5, caption, transform=axes[r, 0].transAxes, ha="right", va="center",
                            fontsize=8)
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c >= len(members):
                continue
            f = members[c]
            image = ax.imshow(rf.gray[f], cmap=GRAY_CMAP, vmin=vmin, vmax=vmax, interpolation="nearest")
            is_rep = mark and f in reps
            ax.set_title(f"{f}★" if is_rep else str(f), fontsize=7, pad=2)
            if is_rep:
                for spine in ax.spines.values():
                    spine.set_visible(True)
                    spine.set_edgecolor("#ff5a00")
                    spine.set_linewidth(2)
    if image is not None:
        cax = fig.add_axes([1 - 0.6 / width, 0.1, 0.15 / width, top - 0.15])
        bar = fig.colorbar(image, cax=cax)
        bar.ax.tick_params(labelsize=7)
    n, k = labels.size, int(clustering.n_clusters)
    head = title or f"layer {clustering.layer or rf.layer}: {n} filters -> {k} clusters ({clustering.method})"
    fig.suptitle(head + "   ★ = representative", fontsize=8, y=1 - 0.12 / height, va="top")
    return _save(fig, path)
