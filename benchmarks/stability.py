"""How stable is a clustering of receptive fields across the seed of the gradient ascent?

For each number of restarts, computes a layer's fields with several seeds, clusters each set
(MSE on the gray fields, DBSCAN with the eps search that keeps a share of the filters, 0.55 as
the notebook kept ~55%) and prints the adjusted Rand index between the clusterings of every
pair of seeds (1.0 = the same partition). Seed streams never overlap: restart r of seed s starts
from the stream (s, r, filter), so restarts=4 runs of two seeds share no start image.
Run: PYTHONPATH=src python benchmarks/stability.py [--weights CKPT] [--layer first] [--restarts 1 4]
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from achroma.clustering import search_keep
from achroma.distances import pairwise_distances
from achroma.fields import compute_receptive_fields
from achroma.io import load_checkpoint

ASSET = Path("src/achroma/assets/demo-model.safetensors")
TRAINING = Path("runs/demo-tiny/last.safetensors")


def labels_for(model: torch.nn.Module, layer: str, norm: dict, seed: int, restarts: int, steps: int,
               keep: float, metric: str) -> np.ndarray:
    """Cluster labels of `layer`'s filters from fields made with `seed`."""
    rf = compute_receptive_fields(model, layer, normalization=norm, seed=seed, restarts=restarts, steps=steps,
                                  progress=False)
    return search_keep(pairwise_distances(rf.gray, metric), keep=keep, method="dbscan").labels_


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help=f"checkpoint (default: {ASSET} if present, else {TRAINING})")
    parser.add_argument("--layer", default="first")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--restarts", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--keep", type=float, default=0.55)
    parser.add_argument("--metric", default="mse")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    weights = Path(args.weights) if args.weights else (ASSET if ASSET.exists() else TRAINING)
    model, meta = load_checkpoint(weights)
    model.eval()
    history = meta.get("training", {}).get("epochs") or [{}]
    last = history[-1]
    trained = f", epoch {last.get('epoch')}, test accuracy {last.get('test_accuracy')}" if last else ""
    print(f"{weights} ({meta['arch']['name']}{trained}), "
          f"layer {args.layer}, {args.metric} + dbscan keep={args.keep}, {args.steps} steps, seeds {args.seeds}")
    for restarts in args.restarts:
        labels = {s: labels_for(model, args.layer, meta["normalization"], s, restarts, args.steps, args.keep,
                                args.metric) for s in args.seeds}
        aris = {(a, b): adjusted_rand_score(labels[a], labels[b]) for a, b in itertools.combinations(args.seeds, 2)}
        first = next(iter(aris))
        counts = sorted({int(v.max()) + 1 for v in labels.values()})
        values = np.array(list(aris.values()))
        print(f"restarts={restarts}: ARI seeds {first[0]} vs {first[1]} = {aris[first]:.3f}; over all "
              f"{len(values)} pairs mean {values.mean():.3f}, min {values.min():.3f}, max {values.max():.3f}; "
              f"clusters per seed {counts} of {len(labels[args.seeds[0]])} filters")


if __name__ == "__main__":
    main()
