"""Random clusters: the control that says whether choosing the clusters matters at all."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..clustering import Clustering
from .base import Selected, Selection, SelectionInput, register_selection


def random_clustering(n_channels: int, n_clusters: int, seed: int = 0, sizes: Sequence[int] | None = None,
                      layer: str | None = None) -> Clustering:
    """A seeded random partition of `n_channels` channels into exactly `n_clusters` non-empty clusters.

    Without `sizes`: n_clusters random channels found one cluster each (and are its representative),
    every other channel joins a uniformly drawn cluster, so the sizes are random too. With `sizes`
    (e.g. another clustering's, to match its size distribution): random members for those sizes,
    representatives drawn among the members. The same arguments give the same partition.
    """
    n, k = int(n_channels), int(n_clusters)
    if not 1 <= k <= n:
        raise ValueError(f"n_clusters must be in [1, {n}]; got {n_clusters}")
    rng = np.random.default_rng(seed)
    if sizes is None:
        order = rng.permutation(n)
        labels = np.empty(n, dtype=np.int64)
        labels[order[:k]] = np.arange(k)
        labels[order[k:]] = rng.integers(0, k, size=n - k)
        reps = order[:k].tolist()
    else:
        sizes = [int(s) for s in sizes]
        if len(sizes) != k or min(sizes) < 1 or sum(sizes) != n:
            raise ValueError(f"sizes must be {k} positive counts adding up to {n}; got {sizes}")
        labels = rng.permutation(np.repeat(np.arange(k), sizes))
        reps = [int(rng.choice(np.flatnonzero(labels == c))) for c in range(k)]
    params = {"seed": int(seed)} if sizes is None else {"seed": int(seed), "sizes": sizes}
    return Clustering(labels, reps, k, "random", params, layer)


@register_selection
class RandomSelection(Selection):
    name = "random"
    help = "random clusters, merged like ours (does choosing the clusters matter?)"

    def select(self, inp: SelectionInput) -> Selected:
        from ..clustering import keep_target

        require_free(inp.graph, inp.path, self.name)
        n = inp.group.channels
        return Selected(random_clustering(n, keep_target(n, inp.keep), inp.seed, layer=inp.path))


def require_free(graph, path: str, method: str) -> None:
    """ValueError unless any partition of `path`'s channels can be merged (no grouped conv or split in the group)."""
    if not graph.constraints(path).free:
        raise ValueError(f"method {method!r} is not supported for layer {path!r}: its channels reach a grouped "
                         "conv or a channel split, whose blocks must be clustered separately")
