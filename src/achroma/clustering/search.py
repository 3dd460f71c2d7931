"""Find the clustering that keeps a requested share of a layer's filters."""
from __future__ import annotations

from typing import Any

import numpy as np

from ._matrix import apply_scale, check_distance_matrix
from .estimators import (AgglomerativeClustering, BoundedAgglomerativeClustering, DBSCANClustering,
                         KMeansClustering, _BaseClustering)

METHODS = ("dbscan", "kmeans", "agglomerative", "bounded")


def keep_target(n: int, keep: float) -> int:
    """Number of filters to keep: round(keep * n), at least 1."""
    if not (0 < keep <= 1):
        raise ValueError(f"keep must be in (0, 1]; got {keep}")
    return max(1, int(round(keep * n)))


def _eps_levels(scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct thresholds at which DBSCAN's graph changes, and a safe eps for each.

    Level k merges all pairs with distance <= v_k; its eps is the midpoint to the next level,
    so the choice survives rounding when the value is printed and typed back.
    """
    upper = scaled[np.triu_indices(scaled.shape[0], k=1)]
    values = np.unique(np.concatenate([[0.0], upper]))
    nxt = np.append(values[1:], values[-1] * 2.0 if values[-1] > 0 else 1.0)
    return values, 0.5 * (values + nxt)


def _search_dbscan(d: np.ndarray, target: int, min_samples: int, scale: str | None) -> DBSCANClustering:
    """Bisect the sorted levels: the cluster count does not increase with eps."""
    _, eps_list = _eps_levels(apply_scale(d, scale))
    cache: dict[int, DBSCANClustering] = {}

    def fit(k: int) -> DBSCANClustering:
        if k not in cache:
            cache[k] = DBSCANClustering(eps=float(eps_list[k]), min_samples=min_samples, scale=scale).fit(d)
        return cache[k]

    lo, hi = 0, len(eps_list) - 1  # find the first level whose count is <= target
    if fit(hi).n_clusters_ > target:
        lo = hi
    while lo < hi:
        mid = (lo + hi) // 2
        if fit(mid).n_clusters_ <= target:
            hi = mid
        else:
            lo = mid + 1
    best = fit(lo)
    if lo > 0:
        prev = fit(lo - 1)  # keeps more than the target; prefer it on a tie (the notebook kept "slightly more")
        if abs(prev.n_clusters_ - target) <= abs(best.n_clusters_ - target):
            best = prev
    return best


def search_keep(
    distance_matrix: Any,
    keep: float = 0.55,
    method: str = "dbscan",
    **kw: Any,
) -> _BaseClustering:
    """Fit `method` so that about round(keep * N) filters (clusters) remain; return the estimator.

    dbscan: bisection over the sorted distinct scaled distances for the eps whose cluster count
    is nearest the target (ties go to keeping more); the eps is in `eps_`. The count changes one
    merge at a time when distances are distinct, so it lands within one filter; exact ties can
    force bigger steps. kmeans / agglomerative / bounded: n_clusters is the target itself.
    The target is stored in `target_`. Extra keywords go to the estimator
    (dbscan: min_samples, scale; kmeans: n_init, random_state, features; agglomerative: linkage, scale;
    bounded: max_size).
    """
    d = check_distance_matrix(distance_matrix)
    target = keep_target(d.shape[0], keep)
    if method == "dbscan":
        est: _BaseClustering = _search_dbscan(d, target, int(kw.pop("min_samples", 1)), kw.pop("scale", "minmax"))
        if kw:
            raise ValueError(f"unexpected arguments for dbscan: {sorted(kw)}")
    elif method == "kmeans":
        features = kw.pop("features", None)
        est = KMeansClustering(n_clusters=target, **kw).fit(d, features=features)
    elif method == "agglomerative":
        est = AgglomerativeClustering(n_clusters=target, **kw).fit(d)
    elif method == "bounded":
        est = BoundedAgglomerativeClustering(n_clusters=target, **kw).fit(d)
    else:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    est.target_ = target  # type: ignore[attr-defined]
    est.keep_ = keep  # type: ignore[attr-defined]
    return est
