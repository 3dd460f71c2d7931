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

from ._common import Paths, writer_convs
from .base import (DistanceSelection, Selected, Selection, SelectionInput, get_selection, register_selection,
                   selection_help, selection_names)
from .clusters import cluster_group

# the methods register themselves on import, in this order (the CLI's): the method, then the baselines
from .fields import FieldSelection  # noqa: E402,I001
from .kernels import KernelSelection, kernel_distances  # noqa: E402
from .weights import WeightSelection, filter_weights, weight_distances  # noqa: E402
from .activations import ActivationSelection, activation_distances  # noqa: E402
from .random_clusters import RandomSelection, random_clustering  # noqa: E402
from .magnitude import L1Selection, magnitude_importance, magnitude_keep  # noqa: E402

METHODS = selection_names()
DISTANCE_METHODS = tuple(n for n in METHODS if isinstance(get_selection(n), DistanceSelection) and n != "fields")
# 'fields' is a distance method too, but its matrix needs the receptive fields (FieldSelection).


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
    from ..surgery import channel_constraints

    if not channel_constraints(model, path, example_input).free:
        raise ValueError(f"method {method!r} is not supported for layer {path!r}: its channels reach a grouped "
                         "conv or a channel split, whose blocks must be clustered separately")


__all__ = ["DISTANCE_METHODS", "METHODS", "DistanceSelection", "Selected", "Selection", "SelectionInput",
           "cluster_group", "get_selection", "FieldSelection", "KernelSelection", "WeightSelection",
           "ActivationSelection", "RandomSelection", "L1Selection", "register_selection", "selection_help", "selection_names", "activation_distances", "filter_weights", "kernel_distances",
           "magnitude_importance", "magnitude_keep", "random_clustering",
           "require_free", "selection_distances", "weight_distances", "writer_convs"]
