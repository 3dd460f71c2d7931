"""Tests for achroma.clustering: estimators, keep-ratio search, result object and input checks."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score
from sklearn.preprocessing import MinMaxScaler

from achroma.clustering import (
    AgglomerativeClustering,
    Clustering,
    DBSCANClustering,
    KMeansClustering,
    classical_mds,
    relabel,
    search_keep,
)


def _random_matrix(n: int, seed: int = 0, dim: int = 5) -> np.ndarray:
    points = np.random.default_rng(seed).random((n, dim))
    return cdist(points, points)


def _block_matrix(sizes=(4, 3, 5, 2), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tight, well separated blocks (shuffled), with their true labels."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(truth)
    centers = 10.0 * np.eye(len(sizes), 6)
    points = centers[truth] + 0.05 * rng.standard_normal((len(truth), 6))
    return cdist(points, points), truth


@pytest.mark.parametrize(
    "estimator",
    [
        DBSCANClustering(eps=0.1),
        KMeansClustering(n_clusters=4),
        AgglomerativeClustering(n_clusters=4),
        AgglomerativeClustering(distance_threshold=0.2),
    ],
    ids=["dbscan", "kmeans", "agglomerative-k", "agglomerative-threshold"],
)
def test_estimators_recover_blocks(estimator) -> None:
    d, truth = _block_matrix()
    est = estimator.fit(d)
    assert est is estimator
    assert adjusted_rand_score(truth, est.labels_) == 1.0
    assert est.n_clusters_ == 4
    assert est.labels_[0] == 0 and np.all(np.diff(np.maximum.accumulate(est.labels_)) <= 1)  # first-appearance order
    for k, rep in enumerate(est.representatives_):
        members = np.flatnonzero(est.labels_ == k)
        assert rep in members
        costs = d[np.ix_(members, members)].sum(axis=1)
        assert costs[list(members).index(rep)] == costs.min()


def test_dbscan_matches_notebook_recipe() -> None:
    """Same partition as the notebook's MinMaxScaler + DBSCAN(min_samples=1) on the flat matrix."""
    d = _random_matrix(36, seed=4)
    scaled = MinMaxScaler().fit_transform(d.reshape(-1, 1)).reshape(d.shape)
    for eps in (0.1, 0.2, 0.3):
        ref = DBSCAN(eps=eps, min_samples=1, metric="precomputed").fit(scaled).labels_
        assert adjusted_rand_score(ref, DBSCANClustering(eps=eps).fit(d).labels_) == 1.0


def test_dbscan_outliers_become_singletons() -> None:
    d, truth = _block_matrix(sizes=(4, 5))
    # two far, isolated points that min_samples=3 marks as noise
    points = np.vstack([np.zeros((1, 2)), np.full((1, 2), 50.0)])
    n = len(truth)
    big = np.zeros((n + 2, n + 2))
    big[:n, :n] = d
    big[n:, n:] = cdist(points, points)
    big[:n, n:] = big[n:, :n] = 100.0
    est = DBSCANClustering(eps=0.05, min_samples=3).fit(big)
    assert est.n_clusters_ == 4
    assert len(set(est.labels_[n:].tolist())) == 2
    assert all(np.sum(est.labels_ == est.labels_[i]) == 1 for i in (n, n + 1))
    assert adjusted_rand_score(truth, est.labels_[:n]) == 1.0
    assert set(est.labels_.tolist()) == set(range(4))


def test_relabel_order_and_outliers() -> None:
    assert relabel([3, -1, 3, 0, -1, 0]).tolist() == [0, 1, 0, 2, 3, 2]


def test_classical_mds_recovers_euclidean_distances() -> None:
    points = np.random.default_rng(2).random((10, 3))
    d = cdist(points, points)
    emb = classical_mds(d)
    np.testing.assert_allclose(cdist(emb, emb), d, atol=1e-9)


@pytest.mark.parametrize("method", ["dbscan", "kmeans", "agglomerative"])
@pytest.mark.parametrize("n", [18, 36, 64])
@pytest.mark.parametrize("keep", [0.3, 0.55, 0.8])
def test_search_keep_hits_target(method: str, n: int, keep: float) -> None:
    d = _random_matrix(n, seed=n)
    est = search_keep(d, keep=keep, method=method)
    target = round(keep * n)
    assert est.target_ == target
    assert abs(est.n_clusters_ - target) <= 1
    if method == "dbscan":
        # the chosen eps reproduces the same clustering when refitted
        again = DBSCANClustering(eps=est.eps_).fit(d)
        assert np.array_equal(again.labels_, est.labels_)


def test_search_keep_extremes() -> None:
    d = _random_matrix(12, seed=1)
    assert search_keep(d, keep=1.0).n_clusters_ == 12
    assert search_keep(d, keep=0.01).n_clusters_ == 1


def test_clustering_json_round_trip(tmp_path) -> None:
    d, _ = _block_matrix()
    result = search_keep(d, keep=0.3, method="dbscan").to_clustering(layer="features.conv0")
    path = tmp_path / "sub" / "conv0.json"
    result.to_json(path)
    assert json.loads(path.read_text())["layer"] == "features.conv0"
    assert [p.name for p in path.parent.iterdir()] == ["conv0.json"]  # no temp file left behind
    back = Clustering.from_json(path)
    assert np.array_equal(back.labels, result.labels) and back.labels.dtype == np.int64
    assert back.representatives == result.representatives
    assert (back.n_clusters, back.method, back.layer) == (result.n_clusters, "dbscan", "features.conv0")
    assert back.params == result.params and "eps" in back.params
    assert sorted(i for g in back.groups() for i in g) == list(range(len(d)))
    assert [back.labels[g].tolist() for g in back.groups()] == [[k] * len(g) for k, g in enumerate(back.groups())]


def test_clustering_validates_itself() -> None:
    Clustering(labels=np.array([0, 1, 0]), representatives=[2, 1], n_clusters=2, method="manual")
    with pytest.raises(ValueError):
        Clustering(labels=np.array([0, 2, 0]), representatives=[0, 1], n_clusters=2, method="manual")
    with pytest.raises(ValueError):
        Clustering(labels=np.array([0, 1, 0]), representatives=[1, 1], n_clusters=2, method="manual")


_GOOD = _random_matrix(5)
_ASYM = _GOOD.copy()
_ASYM[0, 1] += 1.0
_DIAG = _GOOD + np.eye(5)
_NAN = _GOOD.copy()
_NAN[1, 2] = _NAN[2, 1] = np.nan


@pytest.mark.parametrize(
    "matrix",
    [np.zeros((3, 4)), np.zeros(5), _NAN, -_GOOD, _ASYM, _DIAG],
    ids=["non-square", "1-D", "nan", "negative", "asymmetric", "diagonal"],
)
def test_bad_matrix_raises(matrix) -> None:
    for est in (DBSCANClustering(eps=0.1), KMeansClustering(2), AgglomerativeClustering(2)):
        with pytest.raises(ValueError):
            est.fit(matrix)
    with pytest.raises(ValueError):
        search_keep(matrix)


@pytest.mark.parametrize("keep", [0.0, -0.5, 1.5, float("nan")])
def test_bad_keep_raises(keep: float) -> None:
    with pytest.raises(ValueError):
        search_keep(_GOOD, keep=keep)


def test_bad_parameters_raise() -> None:
    with pytest.raises(ValueError):
        search_keep(_GOOD, method="spectral")
    with pytest.raises(ValueError):
        DBSCANClustering(eps=0.0).fit(_GOOD)
    with pytest.raises(ValueError):
        DBSCANClustering(eps=0.1, scale="zscore").fit(_GOOD)
    with pytest.raises(ValueError):
        KMeansClustering(n_clusters=6).fit(_GOOD)
    with pytest.raises(ValueError):
        AgglomerativeClustering(n_clusters=2, distance_threshold=0.5).fit(_GOOD)
    with pytest.raises(ValueError):
        AgglomerativeClustering(n_clusters=2, linkage="ward").fit(_GOOD)
    with pytest.raises(ValueError):
        DBSCANClustering(eps=0.1).to_clustering()
