"""Merging after `achroma group`: channels removed through a PermutedGroupedConv, exactly.

Before, Torch-Pruning took the layer's gather for an element-wise op: compress kept every filter of
a layer upstream of a grouped conv, silently (its constraints put the channels in wrong groups).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from achroma.cli import main
from achroma.grouping import PermutedGroupedConv, apply_grouping, plan_grouping
from achroma.io import load_checkpoint, save_checkpoint
from achroma.surgery import merge_channels, prune_channels, trace_channel_group
from achroma.surgery.groups import channel_groups

from channel_copies import copy_channels

ASSETS = Path(__file__).resolve().parents[1] / "src" / "achroma" / "assets"
DEMO = ASSETS / "demo-model.safetensors"
DEMO_DATA = f"tar:{ASSETS / 'demo-cifar10-jpeg.tar.gz'}"


pytestmark = pytest.mark.usefixtures("one_thread")


def grouped_demo() -> nn.Module:
    model = load_checkpoint(DEMO)[0].eval()
    return apply_grouping(model, plan_grouping(model, min_channels=16)).eval()


def labels_of(n: int, pairs) -> np.ndarray:
    labels = np.arange(n)
    for src, dst in pairs:
        labels[dst] = labels[src]
    return np.unique(labels, return_inverse=True)[1]


# ---- the layer ------------------------------------------------------------------------------------

@pytest.mark.parametrize("side", ["in", "out"])
def test_removing_channels_of_the_layer_is_removing_them_from_its_dense_weight(side):
    torch.manual_seed(0)
    cin, cout, groups = 12, 12, 4
    perm_in, perm_out = torch.randperm(cin).tolist(), torch.randperm(cout).tolist()
    layer = PermutedGroupedConv(cin, cout, groups, bias=True, in_perm=perm_in, out_perm=perm_out).eval()
    for p in layer.parameters():
        nn.init.normal_(p)
    dense, bias = layer.dense_weight().clone(), layer.conv.dense_bias().index_select(0, layer.out_inv)
    # uneven on purpose: two channels of one group, one of another
    n = cin if side == "in" else cout
    slot = layer.input_slot if side == "in" else layer.output_slot
    first = [c for c in range(n) if slot(c)[0] == 0][:2]
    other = [c for c in range(n) if slot(c)[0] == 2][:1]
    drop = first + other
    keep = [c for c in range(n) if c not in drop]
    layer.remove_channels(drop, side)
    if side == "in":
        want_w, want_b, x = dense[:, keep], bias, torch.randn(2, cin - 3, 5, 5)
    else:
        want_w, want_b, x = dense[keep], bias[keep], torch.randn(2, cin, 5, 5)
    assert torch.allclose(layer.dense_weight(), want_w)
    assert (layer.conv.in_splits if side == "in" else layer.conv.out_splits) == [1, 3, 2, 3]
    with torch.no_grad():
        assert torch.allclose(layer(x), F.conv2d(x, want_w[:, :, None, None], want_b), atol=1e-5)
    with pytest.raises(ValueError, match="empties a group"):
        layer.remove_channels([c for c in range(layer.in_channels if side == "in" else layer.out_channels)
                               if slot(c)[0] == 1], side)


# ---- merging upstream of a grouped conv (the demo model) ------------------------------------------

def test_merging_duplicate_filters_upstream_of_a_grouped_conv_removes_them_and_changes_no_output(tmp_path):
    model = grouped_demo()
    x = torch.randn(2, 3, 32, 32)
    layer = "features.0.0.conv"
    uses, constraints = trace_channel_group(model, layer, x)
    grouped = [u for u in uses if u.kind == "PermutedGroupedConv"]
    assert [u.path for u in grouped] == ["features.1.conv"] and grouped[0].role == "consumer"
    # the blocks are the grouped conv's groups as its permutation gives them
    transition = model.get_submodule("features.1.conv")
    part = next(p for p in constraints.partitions if p.path == "features.1.conv")
    assert part.block == {c: transition.input_slot(grouped[0].index[c][0])[0] for c in range(12)}
    blocks = [b for b in constraints.blocks() if len(b) > 1]
    assert len(blocks) >= 2  # two pairs in two different groups: the groups lose unequally
    pairs = [(blocks[0][0], blocks[0][1]), (blocks[1][0], blocks[1][1]), (blocks[0][0], blocks[0][-1])]
    copy_channels(model, uses, pairs)
    with torch.no_grad():
        want = model(x)
    merged = merge_channels(model, layer, labels_of(12, pairs), x).eval()
    assert merged.get_submodule(layer).out_channels == 12 - len({d for _, d in pairs})
    after = merged.get_submodule("features.1.conv")
    assert after.in_channels == 72 - len({d for _, d in pairs}) and after.groups == transition.groups
    with torch.no_grad():
        assert torch.allclose(merged(x), want, atol=1e-4)
    # a cluster across two groups of the grouped conv is refused, by name
    with pytest.raises(ValueError, match="features.1.conv"):
        merge_channels(model, layer, labels_of(12, [(blocks[0][0], blocks[1][0])]), x)
    # the checkpoint carries the shapes and group sizes the merge left
    save_checkpoint(tmp_path / "merged", merged, {"mode": "color"})
    plan = next(p for p in json.loads((tmp_path / "merged.json").read_text())["grouping"]
                if p["layer"] == "features.1.conv")
    assert plan["in_channels"] == after.in_channels and plan["in_splits"] == after.conv.in_splits
    loaded = load_checkpoint(tmp_path / "merged")[0].eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), merged(x), atol=1e-6)


def test_pruning_upstream_of_a_grouped_conv_keeps_the_named_channels():
    model = grouped_demo()
    x = torch.randn(1, 3, 32, 32)
    pruned = prune_channels(model, "features.0.0.conv", [0, 1, 2, 3, 5, 8, 11], x).eval()
    assert pruned.get_submodule("features.0.0.conv").out_channels == 7
    assert pruned.get_submodule("features.1.conv").in_channels == 67
    with torch.no_grad():
        assert pruned(x).shape == (1, 10)


def test_the_convs_inside_a_grouped_conv_are_refused_by_name():
    model = grouped_demo()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="part of the grouped pointwise conv 'features.1.conv'"):
        merge_channels(model, "features.1.conv.conv.convs.0", np.arange(24) // 2, x)
    refused = {g.root: g.refused for g in channel_groups(model, x) if g.refused}
    assert "features.1.conv.conv.convs.0" in refused and "grouped pointwise conv" in refused[
        "features.1.conv.conv.convs.0"]


# ---- a grouped conv writing a residual stream (a ResNet's 1x1 shortcut) ---------------------------

class ResidualNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(32)
        self.branch = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.short = nn.Conv2d(32, 32, 1, bias=False)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(self.bn1(self.branch(x)) + self.short(x))
        return self.head(x.mean((2, 3)))


def test_a_grouped_shortcut_writing_a_stream_merges_its_rows_with_the_stream():
    torch.manual_seed(0)
    model = ResidualNet().eval()
    for bn in (model.bn0, model.bn1):
        bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    grouped = apply_grouping(model, plan_grouping(model, min_channels=16, layers=["short"])).eval()
    assert isinstance(grouped.short, PermutedGroupedConv) and grouped.short.groups == 2
    x = torch.randn(2, 3, 16, 16)
    uses, constraints = trace_channel_group(grouped, "branch", x)
    assert {(u.path, u.role) for u in uses if u.kind == "PermutedGroupedConv"} == {("short", "producer")}
    block = next(b for b in constraints.blocks() if len(b) > 1)
    pairs = [(block[0], block[1])]
    copy_channels(grouped, uses, pairs, names=("weight", "bias", "running_mean", "running_var"))
    with torch.no_grad():  # the shortcut's rows: the copy within its group
        weight, _ = grouped.short.group_blocks()[grouped.short.output_slot(block[0])[0]]
        weight[grouped.short.output_slot(block[1])[1]] = weight[grouped.short.output_slot(block[0])[1]]
        want = grouped(x)
    merged = merge_channels(grouped, "branch", labels_of(32, pairs), x).eval()
    assert merged.short.out_channels == 31 and merged.branch.out_channels == 31
    with torch.no_grad():
        assert torch.allclose(merged(x), want, atol=1e-5)
    roots = [g.root for g in channel_groups(grouped, x)]
    assert "short.conv.convs.0" not in roots  # part of the stream group, not a refused group of its own


# ---- the command ----------------------------------------------------------------------------------

def test_compress_merges_a_layer_upstream_of_a_grouped_conv(tmp_path, capsys):
    grouped = tmp_path / "grouped"
    assert main(["group", "--weights", str(DEMO), "--min-channels", "16", "--repair", "none", "--threads", "1",
                 "--quiet", "--out", str(grouped)]) == 0
    out = tmp_path / "compressed"
    args = ["compress", "--weights", str(grouped / "model.safetensors"), "--dataset", DEMO_DATA,
            "--layers", "features.0.0.conv", "--keep", "0.5", "--repair", "none", "--calib-limit", "2",
            "--test-limit", "2", "--threads", "1", "--no-latency", "--quiet", "--out", str(out)]
    assert main(args) == 0
    model, meta = load_checkpoint(out / "model")
    assert model.get_submodule("features.0.0.conv").out_channels < 12
    assert model.get_submodule("features.1.conv").in_channels < 72
    capsys.readouterr()
    bad = args[:-1] + [str(tmp_path / "inner")]
    bad[bad.index("features.0.0.conv")] = "features.1.conv.conv.convs.0"
    assert main(bad) == 2
    assert "part of the grouped pointwise conv" in capsys.readouterr().err


# ---- whole-network budgets ------------------------------------------------------------------------

def test_the_budget_cost_model_counts_the_grouped_convs_weights_with_the_groups_that_reach_them():
    from achroma.pipeline.budget import width_cost

    model = grouped_demo()
    x = torch.zeros(1, 3, 32, 32)
    groups = channel_groups(model, x)
    cost = width_cost(model, groups, (3, 32, 32))
    assert cost.full["params"] == sum(p.numel() for p in model.parameters())
    transition = model.get_submodule("features.1.conv")
    by_group: dict[int, list[int]] = {}
    for c in range(12):  # features.0.0.conv's channels are the transition's inputs 24..35
        by_group.setdefault(transition.input_slot(24 + c)[0], []).append(c)
    keep = sorted(c for members in by_group.values() for c in members[:2])
    pruned = prune_channels(model, "features.0.0.conv", keep, x)
    assert cost.cost({"features.0.0.conv": len(keep)})["params"] == sum(p.numel() for p in pruned.parameters())
