"""Cluster a group's channels on a distance matrix, inside the blocks the surgery allows.

A grouped conv mixes channels only within its groups and a chunk splits them into parts; a merged
channel must stay inside one block of each (`surgery.ChannelConstraints`), and the blocks of a
standard grouped conv or a chunk must lose equally. With `keep`, the group keeps exactly
keep_target(n, keep) channels where the constraints allow it (the budget planner asks only for
widths they allow: `ChannelGroup.width_after`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..clustering import (AgglomerativeClustering, BoundedAgglomerativeClustering, Clustering, DBSCANClustering,
                          KMeansClustering, keep_target, minmax_scale, search_keep)
from ..surgery import ChannelConstraints


def cluster_group(dist: np.ndarray, constraints: ChannelConstraints, method: str, eps: float | None,
                  keep: float | None, layer: str, min_samples: int = 1,
                  features: np.ndarray | None = None) -> tuple[Clustering, float | None]:
    """(clustering, eps used) of one group's channels; see the module's docstring. `features`: points
    whose Euclidean distances are `dist` (k-means uses them on large groups instead of an embedding)."""
    if constraints.free:
        return _cluster_free(dist, method, eps, keep, layer, min_samples, features)
    return _cluster_constrained(dist, constraints, method, eps, keep, layer, min_samples)


def _cluster_free(dist: np.ndarray, method: str, eps: float | None, keep: float | None, layer: str,
                  min_samples: int, features: np.ndarray | None = None) -> tuple[Clustering, float | None]:
    """Fit one layer's clustering; returns it and the eps it used (None for kmeans/agglomerative-by-count)."""
    extra = {"min_samples": min_samples} if method == "dbscan" else {}
    if method == "kmeans" and features is not None:
        extra["features"] = features
    if keep is not None:
        est = search_keep(dist, keep=keep, method=method, **extra)
    elif method == "dbscan":
        est = DBSCANClustering(eps=float(eps), min_samples=min_samples).fit(dist)
    else:
        est = AgglomerativeClustering(distance_threshold=float(eps)).fit(dist)
    result = est.to_clustering(layer=layer)
    used = getattr(est, "eps_", None)
    if used is None and method == "agglomerative" and eps is not None:
        used = float(eps)
    return result, used


def by_count(method: str, k: int, n_init: int | str = "auto") -> Any:
    """An estimator that makes exactly k clusters in the spirit of `method` (dbscan: single linkage)."""
    if method == "kmeans":
        return KMeansClustering(n_clusters=k, n_init=n_init)
    if method == "bounded":
        return BoundedAgglomerativeClustering(n_clusters=k)
    return AgglomerativeClustering(n_clusters=k, linkage="single" if method == "dbscan" else "average", scale=None)


def block_removals(blocks: list[list[int]], removed: int, constraints: ChannelConstraints) -> list[int]:
    """How many channels each block loses: `removed` in all, shared in proportion to the block sizes
    (largest remainder), then lowered until every balanced partition loses equally in its blocks."""
    n = sum(len(b) for b in blocks)
    exact = [removed * len(b) / n for b in blocks]
    out = [min(int(e), len(b) - 1) for e, b in zip(exact, blocks)]
    for i in sorted(range(len(blocks)), key=lambda i: int(exact[i]) - exact[i]):
        if sum(out) >= removed:
            break
        if out[i] < len(blocks[i]) - 1:
            out[i] += 1
    return _balanced_removals(blocks, out, constraints)


def _balanced_removals(blocks: list[list[int]], removals: list[int], constraints: ChannelConstraints) -> list[int]:
    """Lower per-block removal counts until every balanced partition loses equally in each of its blocks."""
    removals = list(removals)
    changed = True
    while changed:
        changed = False
        for part in constraints.partitions:
            if not part.balanced:
                continue
            members: list[list[int]] = [[] for _ in range(part.n_blocks)]  # meet blocks inside each block
            for i, block in enumerate(blocks):
                if block[0] in part.block:
                    members[part.block[block[0]]].append(i)
            lost = [sum(removals[i] for i in inside) for inside in members]
            floor = min(lost)
            for inside, total in zip(members, lost):
                for i in sorted(inside, key=lambda i: -removals[i]):
                    if total <= floor:
                        break
                    cut = min(removals[i], total - floor)
                    removals[i] -= cut
                    total -= cut
                    changed = changed or cut > 0
    return removals


def _cluster_constrained(dist: np.ndarray, constraints: ChannelConstraints, method: str, eps: float | None,
                         keep: float | None, layer: str, min_samples: int) -> tuple[Clustering, float | None]:
    """Cluster within each block the surgery allows (grouped convs, channel splits).

    With `keep`, the group loses n - keep_target(n, keep) channels, shared among the blocks by
    `block_removals`; the count per block is then exact: kmeans, bounded and agglomerative take it
    as n_clusters, dbscan (min_samples 1 is single linkage cut at eps) becomes single-linkage
    agglomerative with that count. With `eps`, every block is clustered with the same eps on the
    layer's scaled matrix; merge_channels refuses the result if it is unbalanced.
    """
    blocks = constraints.blocks()
    labels = np.zeros(constraints.n_channels, dtype=np.int64)
    reps: list[int] = []
    if keep is not None:
        removals = block_removals(blocks, constraints.n_channels - keep_target(constraints.n_channels, keep),
                                  constraints)
    scaled = minmax_scale(dist)
    for i, block in enumerate(blocks):
        sub = scaled[np.ix_(block, block)]
        if len(block) == 1 or (keep is not None and removals[i] == 0):
            sub_labels, sub_reps = np.arange(len(block)), list(range(len(block)))
        else:
            if keep is not None:
                # k-means in a block: one Ward-seeded run (a ResNeXt-50 has 1,029 blocks; 10 k-means++
                # restarts in each took 24 of its 45 s)
                est = by_count(method, len(block) - removals[i], n_init="ward")
            elif method == "dbscan":
                est = DBSCANClustering(eps=float(eps), min_samples=min_samples, scale=None)
            else:
                est = AgglomerativeClustering(distance_threshold=float(eps), scale=None)
            part = est.fit(sub).to_clustering()
            sub_labels, sub_reps = part.labels, part.representatives
        for local, label in enumerate(sub_labels):
            labels[block[local]] = len(reps) + int(label)
        reps.extend(block[r] for r in sub_reps)
    clustering = Clustering(labels, reps, len(reps), method, {"constrained_blocks": len(blocks)}, layer)
    return clustering, (None if keep is not None else eps)
