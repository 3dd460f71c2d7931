"""Accuracy against parameters and against MACs: a color per method, a marker per repair, each
(method, repair) joined across budgets, and each method's Pareto front drawn over its points."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

MARKERS = "osD^v<>Pp*hX"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both cost (lower) and accuracy (higher), by cost."""
    front, best = [], float("-inf")
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((cost, acc))
            best = acc
    return front


def plot_pareto(records: Sequence[dict[str, Any]], out_dir: str | Path, title: str = "") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_write_bytes

    methods = list(dict.fromkeys(r["method"] for r in records))
    repairs = list(dict.fromkeys(r["repair"] for r in records))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    paths = []
    for cost in ("params", "macs"):
        unit = 1e3 if cost == "params" else 1e6  # thousands of parameters, millions of MACs
        fig, ax = plt.subplots(figsize=(7.5, 5))
        for m in methods:
            mine = [r for r in records if r["method"] == m]
            for j, rep in enumerate(repairs):
                pts = sorted((r[cost] / unit, 100 * r["accuracy"]) for r in mine if r["repair"] == rep)
                if pts:
                    ax.plot(*zip(*pts), color=colors[m], marker=MARKERS[j % len(MARKERS)], lw=0.6, alpha=0.55,
                            ms=5, ls=":")
            front = pareto_front([(r[cost] / unit, 100 * r["accuracy"]) for r in mine])
            ax.plot(*zip(*front), color=colors[m], lw=2, label=m)
        for j, rep in enumerate(repairs):
            ax.plot([], [], color="gray", marker=MARKERS[j % len(MARKERS)], ls="", label=f"repair: {rep}")
        ax.set_xlabel("parameters (thousands)" if cost == "params" else "MACs per image (millions, FlopCounter)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{title}: accuracy against {cost}" if title else f"accuracy against {cost}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="lower right")
        fig.tight_layout()
        path = Path(out_dir) / f"pareto-{cost}.png"
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths
