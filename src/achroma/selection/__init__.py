"""Selection: which channels of a group become one. The receptive-field merge's baselines (issue 9).

Every method works at a given group size (channels kept per group), so each is compared with the
receptive-field merge at identical parameters and MACs. Which reviewer question each answers:

- 'fields'      the method under test: distances between receptive fields by gradient ascent
                (computed by the pipeline with `achroma.fields`, not here).
- 'kernels'     "Is the ascent worth its cost?" The same metric and clustering on the folded
                kernels directly (for a first layer the field is set by the kernel's sums).
- 'weights'     "Does a standard weight-space clustering do as well?" Euclidean distances between
                raw filters: k-means by count on them is k-means on the weights (Son et al.,
                ECCV 2018, on whole filters here).
- 'activations' "Does data-driven redundancy do better?" 1 - correlation of the filters' outputs
                on calibration images.
- 'random'      "Does choosing the clusters matter at all, or does merge + repair do the work?"
                Random clusters, merged like ours.
- 'l1'          "Is merging better than plain pruning?" L1-norm pruning by Torch-Pruning's own
                importance on the whole group, the other channels removed with no fold.

(Training the compressed architecture from scratch, the last baseline of issue 9, is a training
run, not a selection.) The distance methods feed the existing clustering by count:

    >>> if method in DISTANCE_METHODS:
    ...     dist = selection_distances(method, gray, path, metric="mse", batches=calib)
    ...     clustering = AgglomerativeClustering(n_clusters=k).fit(dist).to_clustering(path)
    ...     merged = merge_channels(gray, path, clustering, x)
    >>> elif method == "random":
    ...     require_free(gray, path, x, method)
    ...     merged = merge_channels(gray, path, random_clustering(n, k, seed), x)
    >>> elif method == "l1":
    ...     merged = prune_channels(gray, path, magnitude_keep(gray, path, k, x), x)

`path` of the distance methods may also be the list of a group's writers (all convs adding into
one residual stream).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from torch import nn

from ..surgery import channel_constraints, prune_channels, pruning_clustering
from ._common import Paths, writer_convs
from .activations import activation_distances
from .kernels import kernel_distances
from .magnitude import magnitude_importance, magnitude_keep
from .random_clusters import random_clustering
from .weights import filter_weights, weight_distances

METHODS = ("fields", "kernels", "weights", "activations", "random", "l1")
DISTANCE_METHODS = ("kernels", "weights", "activations")  # N x N matrix -> cluster by count
# 'fields' is a distance method too, but its matrix comes from the pipeline's receptive fields.


def selection_distances(method: str, model: nn.Module, path: Paths, *, metric: str = "mse",
                        batches: Iterable[Any] | None = None, **kw: Any) -> np.ndarray:
    """The N x N distance matrix of a method in DISTANCE_METHODS for `path`'s N channels.

    metric and `kw` (e.g. imed's r) are used by 'kernels' only; 'activations' needs `batches`
    (calibration images the model takes) and accepts max_batches. ValueError for other methods.
    """
    if method == "kernels":
        return kernel_distances(model, path, metric, **kw)
    if method == "weights":
        return weight_distances(model, path)
    if method == "activations":
        if batches is None:
            raise ValueError("method 'activations' needs calibration batches")
        return activation_distances(model, path, batches, max_batches=kw.get("max_batches"))
    if method == "fields":
        raise ValueError("method 'fields' takes its distances from the receptive fields (achroma.fields, "
                         "achroma.distances), computed by the pipeline")
    if method in METHODS:
        raise ValueError(f"method {method!r} gives no distance matrix: use "
                         f"{'random_clustering' if method == 'random' else 'magnitude_keep'}")
    raise ValueError(f"unknown selection method {method!r}; known: {', '.join(METHODS)}")


def require_free(model: nn.Module, path: str, example_input: Any, method: str) -> None:
    """ValueError unless any partition of `path`'s channels can be merged (no grouped conv or split
    in the group): 'random' and 'l1' do not cluster within blocks."""
    if not channel_constraints(model, path, example_input).free:
        raise ValueError(f"method {method!r} is not supported for layer {path!r}: its channels reach a grouped "
                         "conv or a channel split, whose blocks must be clustered separately")


__all__ = ["DISTANCE_METHODS", "METHODS", "activation_distances", "filter_weights", "kernel_distances",
           "magnitude_importance", "magnitude_keep", "prune_channels", "pruning_clustering", "random_clustering",
           "require_free", "selection_distances", "weight_distances", "writer_convs"]
