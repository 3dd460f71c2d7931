"""Size-bounded average linkage: exact counts, no chained clusters, and plain average linkage when unbounded."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import AgglomerativeClustering as SkAgglomerative

from achroma.clustering import BoundedAgglomerativeClustering, KMeansClustering, search_keep


def _euclid(points: np.ndarray) -> np.ndarray:
    return np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))


def _sizes(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels)


def test_unbounded_it_is_scikit_learns_average_linkage():
    rng = np.random.default_rng(0)
    d = _euclid(rng.normal(size=(30, 5)))
    for k in (3, 10, 29):
        ours = BoundedAgglomerativeClustering(n_clusters=k, max_size=30).fit(d).labels_
        ref = SkAgglomerative(n_clusters=k, metric="precomputed", linkage="average").fit(d).labels_
        # the same partition (label numbers may differ)
        assert len({(a, b) for a, b in zip(ours, ref)}) == k


def test_exact_count_and_no_cluster_above_the_bound_where_kmeans_chains():
    """High-dimensional points at similar distances: k-means leaves a big cluster, the bound keeps pairs."""
    rng = np.random.default_rng(1)
    d = _euclid(rng.normal(size=(64, 300)))
    kmeans = KMeansClustering(n_clusters=45).fit(d)
    bounded = BoundedAgglomerativeClustering(n_clusters=45).fit(d)
    assert bounded.n_clusters_ == 45 and bounded.max_size_ == 2
    assert _sizes(bounded.labels_).max() == 2
    assert _sizes(kmeans.labels_).max() > 2  # what the bound is for


def test_the_closest_pairs_are_merged():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(6, 4)) * 10
    points = np.concatenate([centres, centres[:3] + 0.01 * rng.normal(size=(3, 4))])  # 3 near-duplicates
    labels = BoundedAgglomerativeClustering(n_clusters=6).fit(_euclid(points)).labels_
    for i in range(3):
        assert labels[i] == labels[6 + i]
    assert len(set(labels[3:6].tolist())) == 3


def test_the_bound_is_raised_only_when_no_pair_fits():
    """Six points in three tight pairs, far apart, asked for 2 clusters: pairs first, then a pair must grow."""
    points = np.array([[0.0], [0.1], [10.0], [10.1], [20.0], [20.1]])
    est = BoundedAgglomerativeClustering(n_clusters=2).fit(_euclid(points))
    assert est.n_clusters_ == 2 and est.max_size_ == 4
    assert sorted(_sizes(est.labels_).tolist()) == [2, 4]
    with pytest.raises(ValueError, match="n_clusters"):
        BoundedAgglomerativeClustering(n_clusters=7).fit(_euclid(points))


def test_search_keep_makes_the_target_count():
    rng = np.random.default_rng(3)
    d = _euclid(rng.normal(size=(20, 8)))
    est = search_keep(d, keep=0.55, method="bounded")
    assert est.n_clusters_ == 11 and _sizes(est.labels_).max() <= 2


def test_compress_with_bounded_clusters_keeps_the_count_and_the_bound():
    import torch

    from synthetic import random_images

    from achroma.models import create_model
    from achroma.pipeline import CompressConfig, compress

    data = random_images(20)
    torch.manual_seed(0)
    model = create_model("resnet-cifar-20").eval()
    config = CompressConfig(layers="layer3.0.conv1", keep=0.7, cluster_method="bounded", repair="none",
                            fields={"steps": 2}, progress=False)
    result = compress(model, "cifar", data, data, config, log=None)
    (layer,) = result.layers
    assert (layer.channels_before, layer.channels_after) == (64, 45)
    assert np.bincount(layer.clustering.labels).max() == 2
    with pytest.raises(ValueError, match="takes keep"):
        compress(model, "cifar", data, data, CompressConfig(layers="layer3.0.conv1", eps=0.1, cluster_method="bounded",
                                                            repair="none", progress=False), log=None)


def test_medoid_merge_keeps_each_clusters_representative_as_it_was():
    import torch

    from synthetic import random_images

    from achroma.models import create_model
    from achroma.pipeline import CompressConfig, compress

    data = random_images(20)
    torch.manual_seed(0)
    model = create_model("resnet-cifar-20").eval()
    kw = dict(layers="layer2.1.conv1", keep=0.5, cluster_method="bounded", repair="none", fields={"steps": 2},
              progress=False)
    medoid = compress(model, "cifar", data, data, CompressConfig(merge="medoid", **kw), log=None)
    average = compress(model, "cifar", data, data, CompressConfig(**kw), log=None)
    (layer,) = medoid.layers
    assert layer.pruned and not average.layers[0].pruned
    assert layer.clustering.labels.tolist() == average.layers[0].clustering.labels.tolist()
    reps = sorted(layer.clustering.representatives)
    original = model.get_submodule("layer2.1.conv1").weight
    kept = medoid.final_model.get_submodule("layer2.1.conv1").weight
    assert torch.equal(kept, original[reps])
    averaged = average.final_model.get_submodule("layer2.1.conv1").weight
    assert not torch.equal(averaged, original[reps])
    with pytest.raises(ValueError, match="merge must be"):
        CompressConfig(merge="sum")
