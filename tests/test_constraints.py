"""Channel constraints: grouped convs and channel splits restrict which channels may merge.

A grouped conv mixes channels only within a group and needs equal groups; a chunk splits into
parts whose size the code fixes. Clusters within one block, removed equally from every block,
merge exactly; anything else is a ValueError that says which structure and why. ShuffleNet's
channel shuffle becomes an explicit routing that the merged channel feeds.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from achroma.models import create_model, load_state_dict_file, load_weights
from achroma.io import save_checkpoint
from achroma.selection.clusters import _cluster_constrained
from achroma.surgery import channel_constraints, merge_channels, resize_to_state_dict, trace_channel_uses
from achroma.surgery.layers import ChannelShuffle, ShuffleBlock, convert_shuffles, restore_plain_shuffles


class SplitNet(nn.Module):
    """conv -> BN -> chunk(2) -> one conv per half -> cat -> conv (a kDenseNet-like channel split)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        x1, x2 = self.bn(self.stem(x)).chunk(2, dim=1)
        return self.head(torch.cat((self.a(x1), self.b(x2)), 1))


class GroupNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 6, 3, padding=1, groups=2)

    def forward(self, x):
        return self.grouped(torch.relu(self.bn(self.stem(x))))


def _x():
    return torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@torch.no_grad()
def _duplicate(model, path, pairs):
    modules = dict(model.named_modules())
    for use in trace_channel_uses(model, path, _x()):
        if use.role == "producer":
            for name in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(modules[use.path], name, None)
                if isinstance(t, torch.Tensor):
                    for src, dst in pairs:
                        t[use.index[dst]] = t[use.index[src]]
    return model


def _labels(pairs, n):
    labels = np.arange(n)
    for src, dst in pairs:
        labels[dst] = labels[src]
    return np.unique(labels, return_inverse=True)[1]


def _model(cls):
    torch.manual_seed(0)
    model = cls().double().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model


def test_split_constraints_and_exact_merge():
    model = _model(SplitNet)
    c = channel_constraints(model, "stem", _x())
    assert [sorted(b) for b in c.blocks()] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    pairs = [(0, 2), (5, 7)]  # one pair in each half: both halves lose one, chunk still splits right
    _duplicate(model, "stem", pairs)
    merged = merge_channels(model, "stem", _labels(pairs, 8), _x())
    with torch.no_grad():
        assert (merged(_x()) - model(_x())).abs().max() < 1e-10
    assert merged.stem.out_channels == 6 and merged.a.in_channels == 3 and merged.b.in_channels == 3


def test_split_straddle_and_unbalanced_are_refused():
    model = _model(SplitNet)
    with pytest.raises(ValueError, match=r"layer 'stem'.*straddles the parts"):
        merge_channels(model, "stem", _labels([(3, 4)], 8), _x())
    with pytest.raises(ValueError, match=r"layer 'stem'.*unbalanced.*split"):
        merge_channels(model, "stem", _labels([(0, 1)], 8), _x())


def test_grouped_conv_merges_within_groups_at_different_slots():
    model = _model(GroupNet)
    c = channel_constraints(model, "stem", _x())
    assert [sorted(b) for b in c.blocks()] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    pairs = [(0, 1), (5, 7)]  # slot 1 goes in group 0, slot 3 in group 1 (Torch-Pruning alone gets this wrong)
    _duplicate(model, "stem", pairs)
    merged = merge_channels(model, "stem", _labels(pairs, 8), _x())
    with torch.no_grad():
        assert (merged(_x()) - model(_x())).abs().max() < 1e-10
    assert merged.grouped.groups == 2 and tuple(merged.grouped.weight.shape) == (6, 3, 3, 3)


def test_grouped_conv_refusals_say_why():
    model = _model(GroupNet)
    with pytest.raises(ValueError, match=r"straddles the groups.*grouped conv 'grouped'|straddles.*'grouped'"):
        merge_channels(model, "stem", _labels([(3, 4), (0, 1)], 8), _x())
    with pytest.raises(ValueError, match=r"unbalanced.*'grouped'.*\[1, 0\].*equal groups"):
        merge_channels(model, "stem", _labels([(0, 1)], 8), _x())


def test_grouped_conv_round_trip_keeps_groups():
    model = _model(GroupNet).float()
    merged = merge_channels(model, "stem", _labels([(0, 1), (5, 7)], 8), _x().float())
    state = merged.state_dict()
    fresh = GroupNet()
    resize_to_state_dict(fresh, state)
    fresh.load_state_dict(state)
    assert fresh.grouped.groups == 2
    with torch.no_grad():
        assert torch.equal(fresh.eval()(_x().float()), merged(_x().float()))


def test_shuffle_conversion_is_exact_and_reversible():
    torch.manual_seed(0)
    model = create_model("tv:shufflenet_v2_x0_5").eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        convert_shuffles(model)
        assert sum(isinstance(m, ShuffleBlock) for m in model.modules()) == 16
        assert torch.equal(model(x), before)
        restore_plain_shuffles(model)
        assert not any(isinstance(m, ChannelShuffle) for m in model.modules())
        assert torch.equal(model(x), before)


def test_shufflenet_branch_merge_keeps_its_shuffle_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = create_model("tv:shufflenet_v2_x0_5").eval()
    x = torch.rand(1, 3, 32, 32)
    path = "stage3.3.branch2.5"
    merged = merge_channels(model, path, np.arange(48) // 2, x)
    kept = [n for n, m in merged.named_modules() if isinstance(m, ChannelShuffle)]
    assert kept == ["stage3.3.shuffle"]  # only the shuffle the merged channels reach stays explicit
    assert tuple(merged.stage3[3].shuffle.matrix.shape) == (96, 72)
    weights = save_checkpoint(tmp_path / "m", merged, {"surgery": True})
    fresh = create_model("tv:shufflenet_v2_x0_5")
    resize_to_state_dict(fresh, load_state_dict_file(weights))
    load_weights(fresh, weights)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), merged(x))


def test_constrained_clustering_is_balanced():
    model = _model(GroupNet)
    c = channel_constraints(model, "stem", _x())
    rng = np.random.default_rng(0)
    pts = rng.random((8, 2))
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    for method in ("dbscan", "agglomerative", "kmeans"):
        clustering, _ = _cluster_constrained(dist, c, method, None, 0.5, "stem", 1)
        groups = [(rep, np.flatnonzero(clustering.labels == k).tolist())
                  for k, rep in enumerate(clustering.representatives)]
        c.check(groups)  # within groups, balanced
        assert clustering.n_clusters == 4
        merge_channels(model, "stem", clustering, _x())


class GroupClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.grouped(torch.relu(self.bn(self.stem(x)))))
        return self.head(x.mean((2, 3)))


def test_compress_clusters_within_groups_and_keeps_them_balanced():
    from synthetic import random_images

    from achroma.pipeline import CompressConfig, compress

    data = random_images(20, size=16, split="test")
    torch.manual_seed(0)
    config = CompressConfig(layers="stem", keep=0.5, repair="none", fields={"steps": 3}, progress=False)
    result = compress(GroupClassifier().eval(), "cifar", data, data, config, log=None)
    labels = result.layers[0].clustering.labels
    assert all(labels[i] != labels[j] for i in range(4) for j in range(4, 8))  # no cluster across groups
    merged = result.final_model
    assert merged.stem.out_channels == 4 and merged.grouped.groups == 2 and merged.grouped.in_channels == 4
