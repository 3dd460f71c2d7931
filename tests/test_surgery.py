"""Tests for achroma.surgery: merging clusters of a conv layer's channels across model families.

The central invariant: filters that are exact duplicates (in the conv and in every BN entry or
residual-stream producer of their channel) merge with no change in the output and fewer parameters.
"""
from __future__ import annotations

import inspect
from functools import lru_cache

import numpy as np
import pytest
import torch
import torch.nn as nn
from channel_copies import copy_channels

from achroma.clustering import Clustering
from achroma.io import load_checkpoint, save_checkpoint
from achroma.models import create_model, load_state_dict_file, load_weights
from achroma.surgery import (
    ChannelMapShortcut,
    cluster_groups,
    convert_shortcuts,
    merge_channels,
    resize_to_state_dict,
    trace_channel_uses,
)

torch.set_num_threads(1)

# (family, conv whose output channels are merged, what is special about it)
STEMS = [
    ("seed-densenet", "stem"),  # read through concat by every layer of block 1 and the transition
    ("seed-densenet-tiny", "stem"),
    ("densenet-bc-100", "stem"),
    ("resnet-cifar-20", "conv1"),  # the stage-1 residual stream: conv1 + every block's conv2/bn2
    ("tv:resnet18", "conv1"),  # stream through maxpool, read by layer2's downsample conv
    ("tv:densenet121", "features.conv0"),
    ("tv:mobilenet_v2", "features.0.0"),  # read by a depthwise conv (in/out coupled)
]
INNER = [
    ("seed-densenet-tiny", "features.0.1.conv"),  # a dense-block layer
    ("densenet-bc-100", "features.2.3.conv2"),
    ("tv:densenet121", "features.denseblock2.denselayer3.conv2"),
    ("resnet-cifar-20", "layer2.1.conv2"),  # stage-2 stream: option-A shortcut + 3 producers
    ("resnet-cifar-20", "layer1.0.conv1"),  # inside a block
    ("tv:resnet18", "layer3.0.conv2"),  # stream with a 1x1 downsample producer
    ("tv:mobilenet_v2", "features.2.conv.2"),  # inverted-residual stream (24 channels)
]
CASES = STEMS + INNER


def _seeded_model(name: str, seed: int = 0) -> nn.Module:
    """A float64 eval-mode model with random BN affine and running statistics (not the 1/0 defaults)."""
    torch.manual_seed(seed)
    model = create_model(name).double().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g, dtype=torch.float64) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g, dtype=torch.float64) - 0.5)
                m.running_mean.copy_(torch.rand(n, generator=g, dtype=torch.float64) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g, dtype=torch.float64) + 0.5)
    return model


def _example(dtype=torch.float64) -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5), dtype=dtype)


def _pairs(n: int) -> list[tuple[int, int]]:
    """Channel pairs (source, copy): neighbours, the ends, and a pair from the middle thirds (on the
    ResNet stage-2 stream: the channels the option-A shortcut fills from stage 1, not its zeros)."""
    return [(0, 1), (2, n - 1), (n // 3, 2 * n // 3)]


def _labels_for(pairs: list[tuple[int, int]], n: int) -> np.ndarray:
    labels = np.arange(n)
    for src, dst in pairs:
        labels[dst] = labels[src]
    return np.unique(labels, return_inverse=True)[1]


@torch.no_grad()
def _make_duplicates(model: nn.Module, path: str, pairs, example) -> list:
    """Copy channel src to dst in every producer of the channel group (conv, every BN, stream producers)."""
    convert_shortcuts(model)  # option-A shortcuts become channel maps (exact), so their rows can be copied
    uses = trace_channel_uses(model, path, example)
    copy_channels(model, uses, pairs)
    return uses


@lru_cache(maxsize=None)
def _duplicate_case(name: str, path: str):
    """(model with duplicates, merged model, channel uses, example, pairs): built once per case."""
    model = _seeded_model(name)
    x = _example()
    n = model.get_submodule(path).out_channels
    pairs = _pairs(n)
    uses = _make_duplicates(model, path, pairs, x)
    merged = merge_channels(model, path, _labels_for(pairs, n), x)
    return model, merged, uses, x, pairs


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# (a) exact duplicates merge with no change ------------------------------------------------------

@pytest.mark.parametrize("name,path", CASES)
def test_duplicates_merge_exactly(name, path):
    model, merged, _, x, pairs = _duplicate_case(name, path)
    with torch.no_grad():
        before, after = model(x), merged(x)
    assert after.shape == before.shape
    assert (after - before).abs().max().item() < 1e-5
    assert merged.get_submodule(path).out_channels == model.get_submodule(path).out_channels - len(pairs)
    assert _count(merged) < _count(model)


def test_duplicates_by_hand_seed_densenet_tiny():
    """Independent of the traced group: the stem's channel is normalized by every BN of block 1 and the
    transition (each over its concatenated input); copying it there makes an exact duplicate."""
    model = _seeded_model("seed-densenet-tiny")
    x = _example()
    with torch.no_grad():
        norms = [layer.norm for layer in model.features[0]] + [model.features[1].norm]
        model.stem.weight[5] = model.stem.weight[3]
        for bn in norms:
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                t[5] = t[3]
    labels = np.arange(24)
    labels[5] = 3
    labels = np.unique(labels, return_inverse=True)[1]
    merged = merge_channels(model, "stem", labels, x)
    with torch.no_grad():
        assert (merged(x) - model(x)).abs().max().item() < 1e-10
        # With the stem filter duplicated but one consumer BN left different, the merge is not exact.
        norms[2].bias[5] += 0.5
        approx = merge_channels(model, "stem", labels, x)
        assert (approx(x) - model(x)).abs().max().item() > 1e-6


def test_duplicates_by_hand_resnet_stream():
    """Stage-1 stream of ResNet-20: conv1/bn1 and every block's conv2/bn2 produce it; all must agree."""
    model = _seeded_model("resnet-cifar-20")
    x = _example()
    producers = [(model.conv1, model.bn1)] + [(b.conv2, b.bn2) for b in model.layer1]
    with torch.no_grad():
        for conv, bn in producers:
            conv.weight[7] = conv.weight[4]
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                t[7] = t[4]
    labels = np.unique(np.where(np.arange(16) == 7, 4, np.arange(16)), return_inverse=True)[1]
    merged = merge_channels(model, "layer1.1.conv2", labels, x)
    with torch.no_grad():
        assert (merged(x) - model(x)).abs().max().item() < 1e-10
    assert merged.conv1.out_channels == 15 and merged.layer1[2].bn2.num_features == 15
    assert merged.layer1[0].conv1.in_channels == 15 and merged.layer2[0].conv1.in_channels == 15
    assert merged.layer2[0].shortcut.in_channels == 15 and merged.layer2[0].shortcut.out_channels == 32
    # the other streams are untouched
    assert merged.layer2[0].conv2.out_channels == 32 and merged.layer3[0].conv2.out_channels == 64


def test_convert_shortcuts_is_exact():
    model = _seeded_model("resnet-cifar-20")
    x = _example()
    converted = convert_shortcuts(_seeded_model("resnet-cifar-20"))
    assert sum(isinstance(m, ChannelMapShortcut) for m in converted.modules()) == 2
    with torch.no_grad():
        assert torch.equal(model(x), converted(x))


# (b) parameter counts ------------------------------------------------------------------------------

def _resnet_cifar_params(depth: int, streams=(16, 32, 64), in_chans: int = 3, classes: int = 10) -> int:
    """ResNet-(6n+2) parameters from the architecture, with the residual-stream widths as given
    (inner block widths stay 16/32/64): conv1 + bn1, per block conv1/bn1/conv2/bn2, linear head."""
    n = (depth - 2) // 6
    inner = (16, 32, 64)
    total = in_chans * 9 * streams[0] + 2 * streams[0]
    prev = streams[0]
    for s, p in zip(streams, inner):
        for j in range(n):
            total += prev * 9 * p + 2 * p + p * 9 * s + 2 * s
            prev = s
    return total + streams[2] * classes + classes


def test_resnet_formula_matches_create_model():
    assert _resnet_cifar_params(20) == _count(create_model("resnet-cifar-20"))
    assert _resnet_cifar_params(32) == _count(create_model("resnet-cifar-32"))


@pytest.mark.parametrize("name", ["seed-densenet", "seed-densenet-tiny"])
def test_seed_densenet_stem_count_matches_family(name):
    model, merged, _, _, pairs = _duplicate_case(name, "stem")
    k = model.stem.out_channels - len(pairs)
    assert _count(merged) == _count(create_model(name, stem_channels=k))


@pytest.mark.parametrize("path,streams", [("conv1", (13, 32, 64)), ("layer2.1.conv2", (16, 29, 64))])
def test_resnet_cifar_count_matches_formula(path, streams):
    _, merged, _, _, _ = _duplicate_case("resnet-cifar-20", path)
    assert _count(merged) == _resnet_cifar_params(20, streams)


def _removed_params(model: nn.Module, uses, removed: int) -> int:
    """Parameters that removing `removed` channels from every module of the group must drop."""
    total = 0
    for use in uses:
        m = model.get_submodule(use.path)
        slots = len(next(iter(use.index.values())))
        if isinstance(m, nn.BatchNorm2d):
            total += removed * 2
        elif isinstance(m, nn.Conv2d) and use.role == "producer":
            per = m.weight[0].numel() + (1 if m.bias is not None else 0)
            total += removed * per
        elif isinstance(m, nn.Conv2d):
            total += removed * m.out_channels * m.weight[0, 0].numel()
        elif isinstance(m, nn.Linear) and use.role == "consumer":
            total += removed * slots * m.out_features
        elif isinstance(m, nn.Linear):
            total += removed * (m.in_features + (1 if m.bias is not None else 0))
    return total


@pytest.mark.parametrize("name,path", CASES)
def test_count_is_original_minus_removed_rows_and_columns(name, path):
    model, merged, uses, _, pairs = _duplicate_case(name, path)
    assert _count(merged) == _count(model) - _removed_params(model, uses, len(pairs))


def test_resnet18_stem_group_is_what_the_architecture_says():
    _, _, uses, _, _ = _duplicate_case("tv:resnet18", "conv1")
    producers = {u.path for u in uses if u.role == "producer"}
    consumers = {u.path for u in uses if u.role == "consumer"}
    assert producers == {"conv1", "bn1", "layer1.0.conv2", "layer1.0.bn2", "layer1.1.conv2", "layer1.1.bn2"}
    assert consumers == {"layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.downsample.0"}


# (c) non-duplicate merges run and keep the output shape ------------------------------------------

CLUSTERED = [("seed-densenet-tiny", "features.2.0.conv"), ("resnet-cifar-20", "layer3.2.conv2"),
             ("tv:mobilenet_v2", "features.2.conv.2"), ("densenet-bc-100", "features.0.0.conv1")]


@pytest.mark.parametrize("name,path", CLUSTERED)
def test_clustered_merge_runs_and_keeps_output_shape(name, path):
    model = _seeded_model(name)
    x = _example()
    n = model.get_submodule(path).out_channels
    labels = np.arange(n) // 3  # every 3 filters become one
    merged = merge_channels(model, path, labels, x)
    with torch.no_grad():
        out = merged(x)
    assert out.shape == model(x).shape and torch.isfinite(out).all()
    assert merged.get_submodule(path).out_channels == labels.max() + 1


def test_merge_averages_into_the_representative():
    model = _seeded_model("seed-densenet-tiny")
    x = _example()
    labels = np.arange(24)
    labels[0] = 1  # cluster {0, 1}, representative 1 (not the lowest index)
    labels = np.unique(labels, return_inverse=True)[1]
    reps = [1] + list(range(2, 24))
    clustering = Clustering(labels, reps, 23, "manual")
    merged = merge_channels(model, "stem", clustering, x)
    # The first BN that reads the stem's raw output sets each member's scale r_c = its std there;
    # filters are averaged at that scale and given back the mean scale r_m.
    bn = model.features[0][0].norm
    r = torch.sqrt(bn.running_var[[0, 1]] + bn.eps)
    expected = r.mean() * (model.stem.weight[[0, 1]] / r.view(2, 1, 1, 1)).mean(0)
    assert torch.allclose(merged.stem.weight[0], expected)
    assert torch.equal(merged.stem.weight[1:], model.stem.weight[2:])
    assert torch.allclose(merged.features[0][0].norm.running_var[0], r.mean() ** 2 - bn.eps)
    # The consumer reads relu(BN(.)), whose units do not depend on r: its slices are summed.
    conv = model.features[0][0].conv
    assert torch.allclose(merged.features[0][0].conv.weight[:, 0], conv.weight[:, 0] + conv.weight[:, 1])


SCALED = [("resnet-cifar-20", "layer1.0.conv1"),  # conv -> BN inside a block
          ("resnet-cifar-20", "layer2.1.conv2"),  # a stream: three conv -> BN writers and a channel map
          ("seed-densenet-tiny", "stem"),  # a raw conv output read by every BN of a dense block
          ("tv:resnet18", "layer3.0.conv2")]  # a stream with a 1x1 downsample conv -> BN


@pytest.mark.parametrize("name,path", SCALED)
@pytest.mark.parametrize("s", [2.0, 0.3])
def test_members_equal_up_to_bn_scaling_merge_exactly(name, path, s):
    """Filter w and filter s*w, each BN that reads them with mean and std scaled by s: the two
    channels are the same function, so merging them must change nothing (averaging weights and
    statistics separately changed the output by 0.75% relative)."""
    model = _seeded_model(name)
    x = _example()
    n = model.get_submodule(path).out_channels
    pairs = _pairs(n)
    uses = _make_duplicates(model, path, pairs, x)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for use in uses:
            m = modules[use.path]
            for _, dst in pairs:
                (i,) = use.index[dst]
                if use.role == "producer" and type(m) is nn.Conv2d:
                    m.weight[i] *= s
                elif use.role == "producer" and isinstance(m, nn.BatchNorm2d):
                    m.running_mean[i] *= s
                    m.running_var[i] = s * s * (m.running_var[i] + m.eps) - m.eps
        reference = model(x)
    merged = merge_channels(model, path, _labels_for(pairs, n), x)
    with torch.no_grad():
        out = merged(x)
    assert (out - reference).abs().max() / reference.abs().max() < 1e-9
    assert _count(merged) < _count(model)


def test_input_model_is_not_modified():
    model = _seeded_model("resnet-cifar-20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merge_channels(model, "layer2.0.conv2", np.arange(32) // 2, _example())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(isinstance(m, ChannelMapShortcut) for m in model.modules())
    assert not model.training  # eval flags untouched by the tracer


def test_outliers_become_singletons():
    groups = cluster_groups(np.array([0, -1, 0, 1, -1]), 5)
    assert sorted(m for _, members in groups for m in members) == [0, 1, 2, 3, 4]
    assert len(groups) == 4 and (0, [0, 2]) in groups


# (d) save / load round trip ------------------------------------------------------------------------

ROUND_TRIP = [("seed-densenet-tiny", "stem"), ("resnet-cifar-20", "layer2.1.conv2"),
              ("tv:mobilenet_v2", "features.0.0"), ("tv:densenet121", "features.denseblock2.denselayer3.conv2")]


@pytest.mark.parametrize("name,path", ROUND_TRIP)
def test_save_load_round_trip(tmp_path, name, path):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = _example(torch.float32)
    n = model.get_submodule(path).out_channels
    merged = merge_channels(model, path, np.arange(n) // 2, x).eval()
    weights = save_checkpoint(tmp_path / "merged", merged, {"surgery": True})
    # what load_checkpoint does for meta["surgery"]: rebuild, resize to the stored shapes, load strictly
    fresh = create_model(name)
    resize_to_state_dict(fresh, load_state_dict_file(weights))
    load_weights(fresh, weights)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), merged(x))


@pytest.mark.skipif("surgery" not in inspect.getsource(load_checkpoint),
                    reason="achroma.io.load_checkpoint does not call resize_to_state_dict yet")
def test_load_checkpoint_rebuilds_merged_model(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet-cifar-20").eval()
    x = _example(torch.float32)
    merged = merge_channels(model, "conv1", np.arange(16) // 2, x).eval()
    save_checkpoint(tmp_path / "merged", merged, {"surgery": True})
    loaded, meta = load_checkpoint(tmp_path / "merged")
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), merged(x))


# (f) bad input ---------------------------------------------------------------------------------------

def test_unknown_layer_path_lists_conv_paths():
    model = create_model("resnet-cifar-20")
    with pytest.raises(ValueError, match=r"layer 'conv9' is not a module of this model; conv layers: conv1, layer1.0.conv1"):
        merge_channels(model, "conv9", np.arange(16), _example(torch.float32))


def test_non_conv_layer_path():
    with pytest.raises(ValueError, match="BatchNorm2d, not a Conv2d"):
        merge_channels(create_model("resnet-cifar-20"), "bn1", np.arange(16), _example(torch.float32))


def test_clustering_length_must_match_channels():
    with pytest.raises(ValueError, match="15 labels but the layer has 16 output channels"):
        merge_channels(create_model("resnet-cifar-20"), "conv1", np.arange(15), _example(torch.float32))


def test_single_cluster_is_rejected():
    with pytest.raises(ValueError, match="all 16 filters are in one cluster"):
        merge_channels(create_model("resnet-cifar-20"), "conv1", np.zeros(16, dtype=int), _example(torch.float32))


def test_grouped_conv_in_group_needs_clusters_within_groups():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2))
    merge_channels(model, "0", np.arange(8) // 2, torch.rand(1, 3, 8, 8))  # pairs inside groups: fine
    with pytest.raises(ValueError, match="straddles the groups"):
        merge_channels(model, "0", np.array([0, 1, 2, 3, 3, 4, 5, 6]), torch.rand(1, 3, 8, 8))
