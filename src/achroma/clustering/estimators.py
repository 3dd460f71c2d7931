"""Estimators that cluster filters from a precomputed distance matrix (scikit-learn style).

All take the same input, an N x N distance matrix, in `fit`, and set `labels_` (0..K-1 in
order of first appearance), `representatives_` (the medoid of each cluster) and `n_clusters_`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.cluster import DBSCAN as _SkDBSCAN
from sklearn.cluster import AgglomerativeClustering as _SkAgglomerative
from sklearn.cluster import KMeans as _SkKMeans

from ._matrix import apply_scale, check_distance_matrix, classical_mds, medoids, relabel
from .result import Clustering


class _BaseClustering:
    """Shared result handling; subclasses implement `_labels(d)` on the checked matrix."""

    method: str = ""

    labels_: np.ndarray
    representatives_: list[int]
    n_clusters_: int

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments, as recorded in a `Clustering`'s params."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}

    def _labels(self, d: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fit(self, distance_matrix: Any, y: Any = None) -> "_BaseClustering":
        """Cluster the N filters described by an N x N distance matrix; returns self."""
        d = check_distance_matrix(distance_matrix)
        self.labels_ = relabel(self._labels(d))
        self.n_clusters_ = int(self.labels_.max()) + 1
        self.representatives_ = medoids(d, self.labels_)
        return self

    def fit_predict(self, distance_matrix: Any, y: Any = None) -> np.ndarray:
        """`fit`, then return `labels_`."""
        return self.fit(distance_matrix).labels_

    def to_clustering(self, layer: str | None = None) -> Clustering:
        """The fitted result as a plain, saveable `Clustering`."""
        if not hasattr(self, "labels_"):
            raise ValueError("estimator is not fitted; call fit(distance_matrix) first")
        params = self.get_params()
        if hasattr(self, "eps_"):
            params["eps"] = self.eps_
        return Clustering(
            labels=self.labels_.copy(),
            representatives=list(self.representatives_),
            n_clusters=self.n_clusters_,
            method=self.method,
            params=params,
            layer=layer,
        )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class DBSCANClustering(_BaseClustering):
    """DBSCAN on the (by default min-max scaled) precomputed matrix, as in the notebook.

    With min_samples=1 every filter is a core point and clusters are the connected components
    of the graph "distance <= eps". Outliers (-1, possible when min_samples > 1) each become a
    cluster of their own. The notebook: eps=0.027 on the scaled MSE matrix, 36 filters -> 20.
    """

    method = "dbscan"

    def __init__(self, eps: float, min_samples: int = 1, scale: str | None = "minmax") -> None:
        self.eps = eps
        self.min_samples = min_samples
        self.scale = scale

    def _labels(self, d: np.ndarray) -> np.ndarray:
        if not (self.eps > 0):
            raise ValueError(f"eps must be positive; got {self.eps}")
        if int(self.min_samples) < 1:
            raise ValueError(f"min_samples must be >= 1; got {self.min_samples}")
        scaled = apply_scale(d, self.scale)
        self.eps_ = float(self.eps)
        return _SkDBSCAN(eps=self.eps, min_samples=int(self.min_samples), metric="precomputed").fit(scaled).labels_


class KMeansClustering(_BaseClustering):
    """k-means on the classical-MDS embedding of the distance matrix.

    Embedding the matrix (rather than clustering raw fields) lets k-means take the same input
    as the other estimators, whatever metric made it. Exact for Euclidean matrices (IMED);
    for MSE, which is a squared distance, k-means sees points whose distances are the MSEs.
    Scaling the matrix does not change the result, so there is no `scale` option.
    n_init: k-means restarts; "auto" (default): 10 k-means++ restarts up to LARGE points; above,
    one run seeded by the centroids of Ward's agglomerative clustering (the same within-cluster
    variance, merged greedily: O(N^2) where k-means++ seeding costs k x N x D per restart, which
    took 135 of 150 s of EfficientNet-B0's whole-network merge here, 1,280-channel groups at k = 640);
    "ward": always that single Ward-seeded run (the many small blocks of grouped convs).
    The ResNet-20 and the demo model of docs/RESULTS.md have no group above 64 channels: their
    results stand.
    """

    method = "kmeans"
    LARGE = 64

    def __init__(self, n_clusters: int, n_init: int | str = "auto", random_state: int | None = 0) -> None:
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.random_state = random_state

    def fit(self, distance_matrix: Any, y: Any = None, features: np.ndarray | None = None) -> "KMeansClustering":
        """`_BaseClustering.fit`; `features` (N, D): points whose Euclidean distances are the matrix
        (a filter's weights for 'weights'), used instead of the MDS embedding above LARGE points:
        the same geometry without an N x N eigendecomposition (2 s per 1,280-channel group here)."""
        self._features = features
        try:
            return super().fit(distance_matrix, y)
        finally:
            self._features = None

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in super().get_params().items() if not k.startswith("_")}

    def _labels(self, d: np.ndarray) -> np.ndarray:
        n = d.shape[0]
        k = int(self.n_clusters)
        if not (1 <= k <= n):
            raise ValueError(f"n_clusters must be in [1, {n}]; got {self.n_clusters}")
        features = getattr(self, "_features", None)
        points = np.asarray(features, dtype=np.float64) if features is not None and n > self.LARGE else \
            classical_mds(d)
        if k == n:
            return np.arange(n)
        if self.n_init == "ward" or (self.n_init == "auto" and n > self.LARGE):  # Ward-seeded, then Lloyd
            from scipy.cluster.hierarchy import cut_tree, linkage
            from scipy.spatial.distance import squareform

            if features is not None:  # the matrix is these points' Euclidean distances already
                between = np.array(d, dtype=np.float64)
            else:
                x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float64))
                between = torch.cdist(x, x, compute_mode="use_mm_for_euclid_dist").numpy()
            np.fill_diagonal(between, 0.0)
            tree = linkage(squareform(0.5 * (between + between.T), checks=False), method="ward")
            ward = cut_tree(tree, n_clusters=k)[:, 0]
            centers = np.stack([points[ward == c].mean(0) for c in range(k)])
            return _SkKMeans(n_clusters=k, init=centers, n_init=1, random_state=self.random_state).fit(points).labels_
        n_init = 10 if self.n_init == "auto" else int(self.n_init)
        km = _SkKMeans(n_clusters=k, n_init=n_init, random_state=self.random_state)
        return km.fit(points).labels_


class AgglomerativeClustering(_BaseClustering):
    """Hierarchical clustering of the precomputed matrix (average linkage by default).

    Give exactly one of `n_clusters` or `distance_threshold`; the threshold is in the units of
    the (by default min-max scaled) matrix. Linkage: 'average', 'complete' or 'single'.
    """

    method = "agglomerative"

    def __init__(
        self,
        n_clusters: int | None = None,
        distance_threshold: float | None = None,
        linkage: str = "average",
        scale: str | None = "minmax",
    ) -> None:
        self.n_clusters = n_clusters
        self.distance_threshold = distance_threshold
        self.linkage = linkage
        self.scale = scale

    def _labels(self, d: np.ndarray) -> np.ndarray:
        n = d.shape[0]
        if (self.n_clusters is None) == (self.distance_threshold is None):
            raise ValueError("give exactly one of n_clusters or distance_threshold")
        if self.linkage not in ("average", "complete", "single"):
            raise ValueError(f"linkage must be 'average', 'complete' or 'single' (ward needs raw features); got {self.linkage!r}")
        if self.n_clusters is not None and not (1 <= int(self.n_clusters) <= n):
            raise ValueError(f"n_clusters must be in [1, {n}]; got {self.n_clusters}")
        if self.distance_threshold is not None and not (self.distance_threshold >= 0):
            raise ValueError(f"distance_threshold must be >= 0; got {self.distance_threshold}")
        if n == 1:
            return np.zeros(1, dtype=np.int64)
        scaled = apply_scale(d, self.scale)
        model = _SkAgglomerative(
            n_clusters=None if self.n_clusters is None else int(self.n_clusters),
            distance_threshold=self.distance_threshold,
            metric="precomputed",
            linkage=self.linkage,
        )
        return model.fit(scaled).labels_


class BoundedAgglomerativeClustering(_BaseClustering):
    """Average-linkage agglomerative clustering to exactly `n_clusters`, no cluster above `max_size`.

    Why: asked for a count, k-means and plain linkage on deep layers' fields chain many unrelated
    filters into one cluster and leave the rest single (docs/RESULTS.md: 64 -> 45 filters became one
    cluster of 20 and 44 singletons); averaging 20 unrelated filters destroys the layer. Here the
    closest pair of clusters (average linkage, Lance-Williams update) is merged only while the
    merged size stays within `max_size` (default: the smallest size that can reach the count,
    ceil(N / n_clusters), and at least 2: pairs when at least half the filters stay). If no pair
    fits before the count is reached, the bound is raised by one (recorded in `max_size_`).
    """

    method = "bounded"

    def __init__(self, n_clusters: int, max_size: int | None = None) -> None:
        self.n_clusters = n_clusters
        self.max_size = max_size

    def _labels(self, d: np.ndarray) -> np.ndarray:
        n = d.shape[0]
        k = int(self.n_clusters)
        if not (1 <= k <= n):
            raise ValueError(f"n_clusters must be in [1, {n}]; got {self.n_clusters}")
        bound = max(2, -(-n // k)) if self.max_size is None else int(self.max_size)
        if bound < 1:
            raise ValueError(f"max_size must be >= 1; got {self.max_size}")
        link = d.copy()
        np.fill_diagonal(link, np.inf)
        size = np.ones(n, dtype=np.int64)
        owner = np.arange(n)  # cluster id (a surviving row of `link`) of each filter
        alive = np.ones(n, dtype=bool)
        for _ in range(n - k):
            while True:
                fits = (size[:, None] + size[None, :] <= bound) & alive[:, None] & alive[None, :]
                masked = np.where(fits, link, np.inf)
                flat = int(np.argmin(masked))
                if np.isfinite(masked.flat[flat]):
                    break
                bound += 1  # no pair fits: the smallest relaxation that lets the count be reached
            i, j = divmod(flat, n)
            merged = (size[i] * link[i] + size[j] * link[j]) / (size[i] + size[j])  # average linkage
            link[i], link[:, i] = merged, merged
            link[i, i] = np.inf
            link[j], link[:, j] = np.inf, np.inf
            size[i] += size[j]
            alive[j] = False
            owner[owner == j] = i
        self.max_size_ = bound
        return owner
