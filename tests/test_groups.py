"""Whole-network channel groups and budgets: the groups of known architectures, exact cost estimates,
and a whole-network merge of exact duplicates that changes nothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from channel_copies import copy_channels

from achroma.fold import fold_to_gray
from achroma.models import create_model
from achroma.pipeline.budget import uniform_widths, width_cost
from achroma.report import count_macs
from achroma.surgery import merge_channels, trace_channel_uses
from achroma.surgery.groups import channel_groups
from achroma.training import count_parameters

torch.set_num_threads(1)
X = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _gray(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name).double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5)
                m.running_mean.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5)
    return fold_to_gray(model, "cifar", example_input=X)[0]


def test_resnet_20_has_three_streams_and_nine_inner_groups():
    groups = channel_groups(_gray("resnet-cifar-20"), X)
    streams = [g for g in groups if g.kind == "stream"]
    assert [g.root for g in streams] == ["conv1", "layer2.0.conv2", "layer3.0.conv2"]
    assert streams[0].writers == ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
    assert len([g for g in groups if g.kind == "inner"]) == 9
    assert all(g.refused is None for g in groups)


def test_densenet_growth_channels_are_groups_and_the_logits_are_not_merged():
    groups = channel_groups(_gray("seed-densenet-tiny"), X)
    assert [g.root for g in groups][:3] == ["stem", "features.0.0.conv", "features.0.1.conv"]
    assert groups[-1].root == "classifier" and "outputs" in groups[-1].refused


def _merge_to(model: nn.Module, widths: dict[str, int], labels_of=None) -> nn.Module:
    for root, kept in widths.items():
        n = model.get_submodule(root).out_channels
        if kept < n:
            labels = labels_of(n, kept) if labels_of else np.minimum(np.arange(n), kept - 1)
            model = merge_channels(model, root, labels, X)
    return model


@pytest.mark.parametrize("name", ["resnet-cifar-20", "seed-densenet-tiny"])
@pytest.mark.parametrize("target,by", [(0.5, "macs"), (0.3, "macs"), (0.5, "params")])
def test_width_cost_is_exact_and_the_budget_is_met_within_one_channel_a_group(name, target, by):
    gray = _gray(name)
    groups = channel_groups(gray, X)
    cost = width_cost(gray, groups, (1, 32, 32))
    assert cost.full["macs"] == count_macs(gray, (1, 32, 32)) and cost.full["params"] == count_parameters(gray)
    widths = uniform_widths(cost, target, by)
    merged = _merge_to(gray, widths)
    assert count_macs(merged, (1, 32, 32)) == pytest.approx(cost.cost(widths)["macs"], abs=0.5)
    assert count_parameters(merged) == pytest.approx(cost.cost(widths)["params"], abs=0.5)
    achieved = cost.cost(widths)[by]
    assert achieved <= target * cost.full[by]
    one_more = cost.cost({g: min(n + 1, cost.channels[g]) for g, n in widths.items()})[by]
    assert one_more > target * cost.full[by]  # one channel more in every group would exceed the target


@pytest.mark.parametrize("name", ["resnet-cifar-20", "seed-densenet-tiny", "tv:mobilenet_v2"])
def test_whole_network_merge_of_exact_duplicates_changes_nothing(name):
    """Every group's channel n-1 made a duplicate of channel 0 everywhere it is produced; merging
    every group (one after the other) must leave the outputs unchanged."""
    gray = _gray(name)
    groups = [g for g in channel_groups(gray, X) if g.refused is None]
    for g in groups:
        copy_channels(gray, trace_channel_uses(gray, g.root, X), [(0, g.channels - 1)])
    with torch.no_grad():
        reference = gray(X)
    merged = _merge_to(gray, {g.root: g.channels - 1 for g in groups},
                       labels_of=lambda n, kept: np.r_[np.arange(n - 1), 0])
    with torch.no_grad():
        out = merged(X)
    assert (out - reference).abs().max() <= 1e-9 * reference.abs().max()
    assert count_parameters(merged) < count_parameters(gray)


def test_plan_budget_for_a_color_model_with_a_skipped_stream():
    from achroma.pipeline.planner import plan_budget
    from achroma.pipeline.spec import resolve_layers

    color = create_model("resnet-cifar-20").eval()
    plan = plan_budget(color, "cifar", 0.5, "macs", skip=["layer1.1.conv2"])  # any writer names its stream
    assert plan.skipped == ["conv1"] and "conv1" not in plan.layers
    assert plan.predicted["macs"] <= 0.5 * plan.full["macs"]
    assert resolve_layers(color, "all") == [g.root for g in channel_groups(_gray("resnet-cifar-20"), X)]
    gray = fold_to_gray(color.double(), "cifar", example_input=X)[0]
    merged = _merge_to(gray, {g: n for g, n in plan.widths.items() if g in plan.layers})
    assert count_macs(merged, (1, 32, 32)) == pytest.approx(plan.predicted["macs"], abs=0.5)
    with pytest.raises(ValueError, match="not a conv that writes a channel group"):
        plan_budget(color, "cifar", 0.5, skip=["bn1"])
