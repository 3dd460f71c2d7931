"""Cluster a layer's filters from a precomputed distance matrix (pipeline step 4).

    >>> from achroma.clustering import search_keep
    >>> est = search_keep(dist, keep=0.55, method="dbscan")
    >>> result = est.to_clustering(layer="conv1"); result.to_json("conv1.json")
"""
from __future__ import annotations

from ._matrix import check_distance_matrix, classical_mds, medoids, minmax_scale, relabel
from .estimators import AgglomerativeClustering, BoundedAgglomerativeClustering, DBSCANClustering, KMeansClustering
from .result import Clustering
from .search import METHODS, keep_target, search_keep

__all__ = [
    "Clustering",
    "DBSCANClustering",
    "KMeansClustering",
    "AgglomerativeClustering",
    "BoundedAgglomerativeClustering",
    "search_keep",
    "keep_target",
    "METHODS",
    "check_distance_matrix",
    "classical_mds",
    "medoids",
    "minmax_scale",
    "relabel",
]
