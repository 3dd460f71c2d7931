"""Selection baselines (issue 9): kernel, weight and activation distances, random clusters, and L1
pruning checked against Torch-Pruning's own MagnitudePruner at the same group sizes."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch_pruning as tp
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from torch import nn

from achroma.clustering import KMeansClustering
from achroma.distances import pairwise_distances
from achroma.fold import fold_to_gray
from achroma.models import create_model
from achroma.selection import (
    DISTANCE_METHODS,
    METHODS,
    activation_distances,
    kernel_distances,
    magnitude_keep,
    random_clustering,
    require_free,
    selection_distances,
    weight_distances,
)
from achroma.surgery import merge_channels, prune_channels, trace_channel_uses
from achroma.surgery.graph import prepare_for_surgery
from achroma.surgery.layers import (
    ChannelMapPruner,
    ChannelMapShortcut,
    convert_shortcuts,
    dense_shortcuts,
)
from achroma.training import count_parameters

torch.set_num_threads(1)
X1 = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
X3 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@torch.no_grad()
def _random_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    """BN statistics and affine parameters away from their defaults, so that every term counts."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=g, dtype=m.weight.dtype) * 2 - 1)
            m.bias.copy_(torch.rand(n, generator=g, dtype=m.bias.dtype) * 0.6 - 0.1)  # most channels active
            m.running_mean.copy_((torch.rand(n, generator=g, dtype=m.running_mean.dtype) - 0.5) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g, dtype=m.running_var.dtype) + 0.5)
    return model.eval()


def _seq(widths=(8, 12, 8)) -> nn.Sequential:
    a, b, c = widths
    return nn.Sequential(nn.Conv2d(3, a, 3, padding=1), nn.BatchNorm2d(a), nn.ReLU(),
                         nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(),
                         nn.Conv2d(b, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


def _plain_net() -> nn.Sequential:
    torch.manual_seed(0)
    return _random_bn(_seq().double())


def _resnet20(gray: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = _random_bn(create_model("resnet-cifar-20").double())
    return fold_to_gray(model, "cifar", example_input=X1)[0] if gray else model


def _torch_pruning_reference(model: nn.Module, conv_path: str, n_keep: int, x: torch.Tensor) -> nn.Module:
    """Torch-Pruning's own MagnitudePruner (BasePruner) with L1 importance, pruning one group only."""
    ref = convert_shortcuts(copy.deepcopy(model))
    conv = ref.get_submodule(conv_path)
    n = conv.out_channels
    with torch.enable_grad(), dense_shortcuts():
        pruner = tp.pruner.MagnitudePruner(
            ref, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.0,
            pruning_ratio_dict={conv: 1 - (n_keep + 0.5) / n},  # int(n * (1 - ratio)) == n_keep
            customized_pruners={ChannelMapShortcut: ChannelMapPruner()})
    pruner.step()
    assert conv.out_channels == n_keep
    return ref.eval()


# kernels ------------------------------------------------------------------------------------------

def test_kernel_distances_are_the_metric_on_the_kernels_seen_as_multichannel_images():
    model = _plain_net()
    with torch.no_grad():
        model[3].weight[5] = model[3].weight[2]  # a duplicate kernel
    w = model[3].weight.detach().numpy()  # (12, 8, 3, 3)
    d = kernel_distances(model, "3", "mse")
    flat = w.reshape(12, -1)
    assert d == pytest.approx(((flat[:, None] - flat[None]) ** 2).mean(-1), rel=1e-9, abs=1e-12)
    assert d[2, 5] == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(kernel_distances(model, "3", "imed", r=0.5), pairwise_distances(w, "imed", r=0.5))
    ssim = kernel_distances(model, "3", "ssim")  # 3x3 kernels: a 3x3 window, per channel, averaged
    assert np.allclose(ssim, pairwise_distances(w, "ssim", win_size=3)) and ssim[2, 5] == pytest.approx(0, abs=1e-12)
    one_by_one = nn.Sequential(nn.Conv2d(4, 6, 1)).double()
    assert kernel_distances(one_by_one, "0", "ssim").shape == (6, 6)  # window 1: no error on 1x1 kernels


def test_kernel_distances_of_a_folded_first_conv_use_its_gray_kernel():
    gray = _resnet20(gray=True)
    kernels = gray.conv1.weight.detach().numpy()
    assert kernels.shape[1] == 1
    assert np.allclose(kernel_distances(gray, "conv1", "mse"), pairwise_distances(kernels[:, 0], "mse"))


# weights ------------------------------------------------------------------------------------------

def test_weight_distances_are_euclidean_and_mds_kmeans_on_them_is_kmeans_on_the_weights():
    g = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(4, 15, 3).double()
    centres = torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64) * 5
    truth = np.arange(15) % 3
    with torch.no_grad():
        conv.weight.copy_(centres[truth] + 0.05 * torch.randn(15, 4, 3, 3, generator=g, dtype=torch.float64))
    model = nn.Sequential(conv)
    flat = conv.weight.detach().flatten(1).numpy()
    d = weight_distances(model, "0")
    assert d == pytest.approx(np.linalg.norm(flat[:, None] - flat[None], axis=-1), rel=1e-12, abs=1e-12)
    ours = KMeansClustering(n_clusters=3).fit(d).labels_
    theirs = KMeans(n_clusters=3, n_init=10, random_state=0).fit(flat).labels_
    assert adjusted_rand_score(ours, theirs) == 1.0 and adjusted_rand_score(ours, truth) == 1.0


def test_weight_distances_of_a_stream_concatenate_its_writers():
    model = _resnet20()
    writers = ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
    d = weight_distances(model, writers)
    parts = [weight_distances(model, p) for p in writers]
    assert d == pytest.approx(np.sqrt(sum(p ** 2 for p in parts)), rel=1e-9)
    with pytest.raises(ValueError, match="same number of channels"):
        weight_distances(model, ["conv1", "layer2.0.conv1"])


# activations --------------------------------------------------------------------------------------

def _outputs(model, conv, batches):
    seen = []
    h = conv.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    with torch.no_grad():
        for x in batches:
            model(x)
    h.remove()
    return torch.cat(seen).transpose(0, 1).flatten(1).numpy()


def test_activation_distances_are_one_minus_the_correlation_of_the_conv_outputs():
    model = _plain_net()
    with torch.no_grad():
        w, b = model[3].weight, model[3].bias
        w[1], b[1] = w[0], b[0]  # duplicate -> 0
        w[2], b[2] = -2 * w[0], 0.3  # anti-correlated -> 2
        w[3], b[3] = 3 * w[0], -1.0  # positive scale and shift -> 0
    batches = [torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
               for i in range(3)]
    model.train()
    d = activation_distances(model, "3", [(x, torch.zeros(3)) for x in batches])
    assert model.training and all(m.training for m in model.modules())  # mode left as it was
    expected = 1 - np.corrcoef(_outputs(model.eval(), model[3], batches))
    np.fill_diagonal(expected, 0)
    assert d == pytest.approx(expected, abs=1e-9)
    assert d[0, 1] == pytest.approx(0, abs=1e-9) and d[0, 3] == pytest.approx(0, abs=1e-9)
    assert d[0, 2] == pytest.approx(2, abs=1e-9)
    assert np.allclose(activation_distances(model, "3", batches), d)  # plain tensors work too


def test_activation_distances_of_constant_channels():
    model = _plain_net()
    with torch.no_grad():
        model[3].weight[[4, 6, 7]] = 0.0
        model[3].bias[[4, 6]] = 0.5
        model[3].bias[7] = -0.5
    d = activation_distances(model, "3", [X3])
    assert d[4, 6] == 0.0 and d[4, 7] == 1.0 and d[4, 0] == 1.0
    with pytest.raises(ValueError, match="no calibration image"):
        activation_distances(model, "3", [])


# random -------------------------------------------------------------------------------------------

def test_random_clustering_is_seeded_and_has_exactly_the_clusters_asked_for():
    for seed in range(20):
        c = random_clustering(16, 5, seed)
        assert c.n_clusters == 5 and sorted(set(c.labels.tolist())) == list(range(5))
        assert all(c.labels[r] == k for k, r in enumerate(c.representatives))
    a, b = random_clustering(16, 5, 7), random_clustering(16, 5, 7)
    assert np.array_equal(a.labels, b.labels) and a.representatives == b.representatives
    assert any(not np.array_equal(random_clustering(16, 5, s).labels, a.labels) for s in range(8, 12))
    sizes = [1, 2, 3, 10]
    c = random_clustering(16, 4, 0, sizes=sizes)
    assert sorted(np.bincount(c.labels).tolist()) == sorted(sizes)
    with pytest.raises(ValueError):
        random_clustering(4, 5, 0)
    with pytest.raises(ValueError):
        random_clustering(16, 4, 0, sizes=[1, 2, 3, 4])


def test_random_clustering_merges_like_ours():
    model = _plain_net()
    merged = merge_channels(model, "3", random_clustering(12, 5, 0), X3)
    assert merged[3].out_channels == 5 and merged[6].in_channels == 5
    assert merged(X3).shape == (2, 10)


# l1 pruning ---------------------------------------------------------------------------------------

def test_l1_pruning_of_an_inner_group_equals_torch_prunings_magnitude_pruner():
    model = _plain_net()
    keep = magnitude_keep(model, "3", 5, X3)
    ours = prune_channels(model, "3", keep, X3)
    ref = _torch_pruning_reference(model, "3", 5, X3)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert len(keep) == 5
    assert torch.allclose(ours(x), ref(x), atol=1e-5, rtol=0)
    assert count_parameters(ours) == count_parameters(ref) == count_parameters(_seq((8, 5, 8)))
    assert not torch.allclose(ours(x), model(x), atol=1e-3)  # pruning did change the model


@pytest.mark.parametrize("path,n_keep", [("conv1", 9), ("layer2.1.conv1", 13)])
def test_l1_pruning_of_a_resnet_stream_and_inner_group_equals_torch_pruning(path, n_keep):
    model = _resnet20()
    keep = magnitude_keep(model, path, n_keep, X3)
    ours = prune_channels(model, path, keep, X3)
    ref = _torch_pruning_reference(model, path, n_keep, X3)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.allclose(ours(x), ref(x), atol=1e-5, rtol=0)
    assert count_parameters(ours) == count_parameters(ref) < count_parameters(model)
    if path == "conv1":  # the stage-1 stream shrinks in every conv that writes it
        assert [ours.get_submodule(p).out_channels for p in ("conv1", "layer1.0.conv2", "layer1.2.conv2")] == [9] * 3


def _zero_reads(model: nn.Module, path: str, removed: list[int], x: torch.Tensor) -> nn.Module:
    """The uncompressed model with every read of the `removed` channels zeroed: what pruning must compute."""
    work = prepare_for_surgery(copy.deepcopy(model))
    with torch.no_grad():
        for use in trace_channel_uses(model, path, x):
            if use.role == "consumer":
                module = work.get_submodule(use.path)
                tensor = module.matrix if hasattr(module, "matrix") else module.weight
                groups = getattr(module, "groups", 1)
                per, rows = tensor.shape[1], tensor.shape[0] // groups  # a grouped conv: slot i % per of group i // per
                for c in removed:
                    for i in use.index[c]:
                        g = i // per if groups > 1 else 0
                        tensor[g * rows:(g + 1) * rows if groups > 1 else None, i % per] = 0.0
    return work


def test_l1_on_a_folded_stream_scores_the_folded_conv_and_prunes_exactly():
    gray = _resnet20(gray=True)
    keep = magnitude_keep(gray, "conv1", 10, X1)
    low = next(c for c in range(16) if c not in keep)
    with torch.no_grad():
        gray.conv1.weight[low] *= 1e3  # the folded conv's own filter norms count in the score
    keep = magnitude_keep(gray, "conv1", 10, X1)
    assert low in keep
    pruned = prune_channels(gray, "conv1", keep, X1)
    assert pruned.conv1.out_channels == 10 and pruned.conv1.border_kernel.shape[0] == 10
    removed = [c for c in range(16) if c not in keep]
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    assert torch.allclose(pruned(x), _zero_reads(gray, "conv1", removed, x)(x), atol=1e-9, rtol=1e-9)


class _GroupedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 6, 3, padding=1, groups=2)

    def forward(self, x):
        return self.grouped(torch.relu(self.bn(self.stem(x))))


def test_constrained_groups_prune_within_blocks_and_refuse_random_and_l1():
    torch.manual_seed(0)
    model = _random_bn(_GroupedNet().double())
    pruned = prune_channels(model, "stem", [0, 2, 5, 6], X3)  # two kept per group of the grouped conv
    assert pruned.grouped.in_channels == 4
    assert torch.allclose(pruned(X3), _zero_reads(model, "stem", [1, 3, 4, 7], X3)(X3), atol=1e-9)
    with pytest.raises(ValueError, match="unbalanced"):
        prune_channels(model, "stem", [0, 1, 2, 4], X3)
    with pytest.raises(ValueError, match="grouped conv or a channel split"):
        magnitude_keep(model, "stem", 4, X3)
    with pytest.raises(ValueError, match="not supported for layer"):
        require_free(model, "stem", X3, "random")
    require_free(_plain_net(), "3", X3, "random")  # a free group passes


def test_prune_channels_checks_keep():
    model = _plain_net()
    for bad in ([], [0, 0], [12]):
        with pytest.raises(ValueError):
            prune_channels(model, "3", bad, X3)
    same = prune_channels(model, "3", range(12), X3)
    assert torch.allclose(same(X3), model(X3))
    with pytest.raises(ValueError, match="n_keep"):
        magnitude_keep(model, "3", 0, X3)


# dispatcher ---------------------------------------------------------------------------------------

def test_selection_distances_dispatches_the_distance_methods_and_refuses_the_others():
    model = _plain_net()
    assert set(DISTANCE_METHODS) < set(METHODS) and {"fields", "random", "l1"} <= set(METHODS)
    for method in DISTANCE_METHODS:
        d = selection_distances(method, model, "3", metric="mse", batches=[X3])
        assert d.shape == (12, 12) and np.allclose(d, d.T) and np.all(np.diag(d) == 0)
    assert np.array_equal(selection_distances("weights", model, "3"), weight_distances(model, "3"))
    for method, message in (("fields", "receptive fields"), ("random", "random_clustering"),
                            ("l1", "magnitude_keep"), ("nope", "unknown")):
        with pytest.raises(ValueError, match=message):
            selection_distances(method, model, "3")
    with pytest.raises(ValueError, match="calibration"):
        selection_distances("activations", model, "3")
