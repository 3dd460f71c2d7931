"""The shape of a sweep's clusters: sizes per layer and method, and the clusters figure of chosen layers.

Reads the merged models a sweep saved (`models/<by>-<target>-<method>.json` hold every layer's labels),
prints for each method the largest cluster, the number of singletons and the share of filters in
clusters of more than 4, and, with --figure LAYER, draws that layer's clusters for each method
(receptive fields recomputed in the color model with the sweep's own settings, so the tiles are
what the 'fields' method clustered). No training; seconds per figure.

    PYTHONPATH=src python scripts/sweep_clusters.py runs/sweep-r20 --weights checkpoints/resnet-cifar-20-30ep.safetensors \
        --target 0.5 --figure layer3.2.conv1 --out docs/figures
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from achroma.clustering import Clustering


def load_layers(sweep: Path, prefix: str) -> dict[str, dict[str, dict]]:
    """{method: {layer: summary}} for every merged model of one budget."""
    out = {}
    for path in sorted((sweep / "models").glob(f"{prefix}-*.json")):
        method = path.stem[len(prefix) + 1:]
        layers = json.loads(path.read_text())["sweep"].get("layers", [])
        if method == "l1" or any(ly.get("pruned") for ly in layers):
            continue  # pruning: kept channels, no clusters to look at
        out[method] = {ly["layer"]: ly for ly in layers}
    return out


def shape(labels: list[int]) -> tuple[int, int, float]:
    """(largest cluster, singletons, share of filters in clusters of more than 4)."""
    sizes = np.bincount(np.asarray(labels))
    big = sizes[sizes > 4].sum() / sizes.sum()
    return int(sizes.max()), int((sizes == 1).sum()), float(big)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--weights", default=None, help="the sweep's color model (needed with --figure)")
    parser.add_argument("--figure", action="append", default=[], help="a layer whose clusters to draw")
    parser.add_argument("--methods", default="fields,kernels,weights,activations,random",
                        help="methods to draw (l1 keeps single filters: nothing to draw)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the figures (default: the sweep's)")
    args = parser.parse_args()
    settings = json.loads((args.sweep / "sweep.json").read_text())
    prefix = f"{settings['by']}-{args.target:g}"
    methods = load_layers(args.sweep, prefix)
    if not methods:
        raise SystemExit(f"no merged models for {prefix} in {args.sweep / 'models'}")
    print(f"{args.sweep} at {prefix}: per layer 'filters -> clusters: largest cluster / singletons'")
    layers = list(next(iter(methods.values())))
    print("| layer | " + " | ".join(methods) + " |")
    print("|---|" + "---|" * len(methods))
    for layer in layers:
        cells = []
        for method, mine in methods.items():
            ly = mine[layer]
            largest, singles, _ = shape(ly["labels"])
            cells.append(f"{ly['filters_before']}->{ly['filters_after']}: {largest} / {singles}")
        print(f"| {layer} | " + " | ".join(cells) + " |")
    for method, mine in methods.items():
        all_labels = [shape(ly["labels"]) for ly in mine.values()]
        print(f"{method}: largest cluster {max(s[0] for s in all_labels)}, "
              f"filters in clusters of more than 4: {np.mean([s[2] for s in all_labels]):.1%} (mean over layers)")
    if args.figure:
        draw(args, settings, methods, prefix)


def draw(args, settings: dict, methods: dict, prefix: str) -> None:
    from achroma.fields import compute_receptive_fields
    from achroma.fields.figures import plot_clusters
    from achroma.io import load_checkpoint

    if args.weights is None:
        raise SystemExit("--figure needs --weights (the sweep's color model)")
    model, meta = load_checkpoint(args.weights)
    fields = settings["merge"]["fields"]
    out = args.out or args.sweep
    out.mkdir(parents=True, exist_ok=True)
    for layer in args.figure:
        rf = compute_receptive_fields(model.eval(), layer, normalization=meta.get("normalization"),
                                      seed=settings["merge"]["seed"], progress=False, **fields)
        for method in [m for m in args.methods.split(",") if m in methods]:
            ly = methods[method][layer]
            clustering = Clustering(np.asarray(ly["labels"]), ly["representatives"], ly["filters_after"],
                                    method=method, layer=layer)
            path = out / f"{settings['model']}-{prefix}-{method}-{layer}.png"
            plot_clusters(rf, clustering, path, title=f"{settings['model']} {layer} at {prefix} by {method}: "
                          f"{ly['filters_before']} -> {ly['filters_after']} clusters")
            print(path)


if __name__ == "__main__":
    main()
