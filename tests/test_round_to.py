"""Issue 23: budgets with widths rounded to multiples of N (`round_to`, `compress --round-to`).

The widths of every merged group are multiples of N where the group has N channels or more, and the
budget still holds: by the cost model, and by torch's FlopCounter on the merged model itself.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from achroma.cli import main
from achroma.demo import DEMO_DATA, assets_dir
from achroma.fold import fold_to_gray
from achroma.io import load_checkpoint, save_checkpoint
from achroma.models import create_model
from achroma.pipeline.budget import round_widths, uniform_widths, width_cost
from achroma.pipeline.planner import plan_budget
from achroma.costs import count_macs
from achroma.surgery.groups import channel_groups

X = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def color():
    torch.manual_seed(0)
    return create_model("resnet-cifar-20").eval()


@pytest.fixture(scope="module")
def cost(color):
    gray = fold_to_gray(color, "cifar")[0].eval()
    return width_cost(gray, channel_groups(gray, X), (1, 32, 32))


@pytest.mark.parametrize("n", [8, 16])
@pytest.mark.parametrize("by", ["macs", "params"])
def test_rounded_widths_are_multiples_and_the_budget_holds(cost, n, by):
    for target in (0.3, 0.5, 0.7):
        if (by, n, target) == ("macs", 16, 0.3):  # its 16-channel groups cannot go below 16 channels
            with pytest.raises(ValueError, match="a merged group keeps at least 16"):
                uniform_widths(cost, target, by, round_to=n)
            continue
        widths = uniform_widths(cost, target, by, round_to=n)
        assert cost.cost(widths)[by] <= target * cost.full[by]
        for g, w in widths.items():
            full = cost.channels[g]
            assert w == full or (full >= n and w % n == 0 and w >= n) or (full < n and 1 <= w < full)
        assert any(w < cost.channels[g] for g, w in widths.items())
    plain = uniform_widths(cost, 0.5, by)
    assert any(w % n for w in plain.values())  # without rounding the widths are odd (the test can fail)


def test_round_to_one_is_the_plain_plan_and_bad_values_are_refused(color, cost):
    assert uniform_widths(cost, 0.5, "macs", round_to=1) == uniform_widths(cost, 0.5, "macs")
    for bad in (0, -8, 2.5, True):
        with pytest.raises(ValueError, match="round_to must be a positive integer"):
            uniform_widths(cost, 0.5, "macs", round_to=bad)
    with pytest.raises(ValueError, match="round_to must be a positive integer"):
        plan_budget(color, "cifar", 0.5, round_to=0)
    assert round_widths({"conv1": 13, "layer3.0.conv1": 64}, cost.channels, 8) == {"conv1": 8, "layer3.0.conv1": 64}


def test_plan_budget_threads_round_to(color):
    plan = plan_budget(color, "cifar", 0.5, "macs", round_to=16)
    assert plan.predicted["macs"] <= 0.5 * plan.full["macs"]
    assert plan.layers and all(plan.widths[g] % 16 == 0 for g in plan.layers)


def test_compress_round_to_merged_model_is_multiples_and_within_budget_by_flop_counter(color, tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "color", color, {"mode": "color", "normalization": "cifar"})
    out = tmp_path / "out"
    assert main(["compress", "--weights", str(ckpt), "--dataset", f"tar:{assets_dir() / DEMO_DATA}",
                 "--target-macs", "0.5", "--round-to", "8", "--selection", "weights", "--repair", "none",
                 "--no-latency", "--test-limit", "2", "--threads", "1", "--quiet", "--out", str(out)]) == 0
    merged, _ = load_checkpoint(out / "model.safetensors")
    report = (out / "report.md").read_text()  # no receptive fields were computed, and the report says so
    assert "- Selection: weights" in report and "ascent steps" not in report
    folded = fold_to_gray(color, "cifar")[0]
    widths = [m.out_channels for m in merged.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths), widths
    assert count_macs(merged, (1, 32, 32)) <= 0.5 * count_macs(folded, (1, 32, 32))
