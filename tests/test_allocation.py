"""Sharing a whole-network budget by sensitivity, and merging group by group with a repair between."""
from __future__ import annotations

import pytest
import torch

from synthetic import random_images

from achroma.fold import fold_to_gray
from achroma.models import create_model
from achroma.pipeline import CompressConfig, RepairConfig, compress
from achroma.pipeline.allocation import measure_sensitivity, sensitivity_widths
from achroma.pipeline.budget import uniform_widths, width_cost
from achroma.pipeline.planner import plan_budget
from achroma.surgery.groups import channel_groups

X = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def gray():
    torch.manual_seed(0)
    return fold_to_gray(create_model("resnet-cifar-20").eval(), "cifar")[0].eval()


@pytest.fixture(scope="module")
def cost(gray):
    return width_cost(gray, channel_groups(gray, X), (1, 32, 32))


def test_sensitive_groups_keep_more_channels_and_the_budget_holds(cost):
    roots = list(cost.channels)
    flat = {g: 1.0 for g in roots}
    sharp = {**flat, "layer3.0.conv1": 100.0}
    for by in ("macs", "params"):
        even, skewed = sensitivity_widths(cost, 0.5, flat, by), sensitivity_widths(cost, 0.5, sharp, by)
        for widths in (even, skewed):
            assert cost.cost(widths)[by] <= 0.5 * cost.full[by]
            assert all(max(2, 0.25 * cost.channels[g]) <= widths[g] <= cost.channels[g] for g in roots)
        assert skewed["layer3.0.conv1"] > even["layer3.0.conv1"]
    skipped = sensitivity_widths(cost, 0.6, flat, "macs", skip=["conv1"])
    assert skipped["conv1"] == cost.channels["conv1"]
    with pytest.raises(ValueError, match="no allocation reaches"):
        sensitivity_widths(cost, 0.01, flat, "macs", skip=roots[:6])


def test_equal_sensitivities_spread_the_cut_over_every_group(cost):
    """With equal damage models the greedy cut touches every group (no group is emptied to spare others)."""
    widths = sensitivity_widths(cost, 0.5, {g: 1.0 for g in cost.channels}, "macs")
    uniform = uniform_widths(cost, 0.5, "macs")
    assert all(w < cost.channels[g] for g, w in widths.items())
    assert all(w >= 0.25 * uniform[g] for g, w in widths.items())


def test_sensitivity_is_measured_per_group_and_feeds_plan_budget(gray):
    images = torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    sens = measure_sensitivity(gray, ["layer1.0.conv1", "layer3.2.conv1"], images)
    assert set(sens) == {"layer1.0.conv1", "layer3.2.conv1"} and all(v >= 0 for v in sens.values())
    color = create_model("resnet-cifar-20").eval()
    plan = plan_budget(color, "cifar", 0.5, "macs", allocation="sensitivity", calibration=images)
    assert plan.predicted["macs"] <= 0.5 * plan.full["macs"]
    with pytest.raises(ValueError, match="needs calibration"):
        plan_budget(color, "cifar", 0.5, "macs", allocation="sensitivity")
    with pytest.raises(ValueError, match="unknown allocation"):
        plan_budget(color, "cifar", 0.5, "macs", allocation="greedy")


def test_group_by_group_with_a_refit_between_keeps_the_widths():
    data = random_images(40, size=16)
    torch.manual_seed(0)
    model = create_model("seed-densenet-tiny").eval()
    kw = dict(layers="first:2", keep=0.5, cluster_method="kmeans", repair="none", fields={"steps": 2},
              progress=False, repair_config=RepairConfig(refit_images=20))
    once = compress(model, "cifar", data, data, CompressConfig(**kw), log=None)
    stepwise = compress(model, "cifar", data, data, CompressConfig(between="ls-refit", **kw), log=None)
    assert [ly.channels_after for ly in stepwise.layers] == [ly.channels_after for ly in once.layers]
    assert any(k.startswith("between ") for k in stepwise.timings)
    a, b = once.final_model.state_dict(), stepwise.final_model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the refit between steps changed weights
    with pytest.raises(ValueError, match="between must be"):
        CompressConfig(between="distill")


def test_an_insensitive_group_stops_at_a_quarter_of_its_channels(cost):
    """A group that seems free to cut is cut to its floor (a quarter, at least 2), never to one channel."""
    sens = {g: 1.0 for g in cost.channels}
    sens["layer3.0.conv1"] = 1e-9
    widths = sensitivity_widths(cost, 0.5, sens, "macs")
    assert widths["layer3.0.conv1"] == 16  # 64 channels: the floor, reached first


def test_calibration_images_are_a_seeded_stratified_gray_batch():
    from achroma.pipeline.allocation import calibration_images

    data = random_images(60, size=16)
    a, b = calibration_images(data, seed=3), calibration_images(data, seed=3)
    assert a.shape == (60, 1, 16, 16) and torch.equal(a, b)  # 25 a class asked, 6 a class there
    assert 0 <= float(a.min()) and float(a.max()) <= 1
