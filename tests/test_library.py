"""achroma as a library, on a model class nobody in achroma wrote (defined only in this file).

`ShuffleDenseNet` has a ShuffleNet-v1 unit (grouped 1x1 convs, channel shuffle by
view/transpose/view, the first unit concatenating its branch with the pooled input, the next one
adding a residual) and a pre-activation DenseNet block (BN-ReLU-conv, the new features
concatenated before the old ones). The stem's 24 channels are 24 positions of the 120-channel
stream that follows, reached by 3-group 1x1 convs: the channel groups are followed position by
position, and the grouped 1x1 convs that would block them are made unequal.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from achroma.data import load_dataset
from achroma.io import load_checkpoint, save_checkpoint
from achroma.pipeline import Budget, CompressConfig, Compressor
from achroma.pipeline.budget import width_cost
from achroma.costs import count_macs
from achroma.surgery import merge_channels, trace_channel_uses
from achroma.surgery.groups import ChannelGraph, unequal_groups

HERE = Path(__file__).resolve().parent
DEMO_DATA = HERE.parent / "src" / "achroma" / "assets" / "demo-cifar10-jpeg.tar.gz"


def shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNet v1: grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; concat (stride 2) or residual add."""

    def __init__(self, cin: int, cout: int, groups: int = 3, stride: int = 1, first_grouped: bool = True):
        super().__init__()
        self.stride, self.groups = stride, groups
        branch, mid = (cout - cin if stride == 2 else cout), cout // 4
        self.gconv1 = nn.Conv2d(cin, mid, 1, groups=groups if first_grouped else 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.gconv2 = nn.Conv2d(mid, branch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = shuffle(F.relu(self.bn1(self.gconv1(x))), self.groups)
        out = self.bn3(self.gconv2(self.bn2(self.dw(out))))
        if self.stride == 2:
            return F.relu(torch.cat([F.avg_pool2d(x, 3, 2, 1), out], 1))
        return F.relu(x + out)


class PreActDense(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(F.relu(self.bn(x))), x], 1)  # new features first


class ShuffleDenseNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 24, growth: int = 12):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.stage2 = nn.Sequential(ShuffleUnit(width, 120, 3, 2, first_grouped=False), ShuffleUnit(120, 120, 3, 1))
        self.dense = nn.Sequential(PreActDense(120, growth), PreActDense(120 + growth, growth))
        self.bn = nn.BatchNorm2d(120 + 2 * growth)
        self.fc = nn.Linear(120 + 2 * growth, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dense(self.stage2(F.relu(self.bn1(self.conv1(x)))))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).flatten(1))


def make_model(seed: int = 0) -> ShuffleDenseNet:
    """Random weights with randomized BatchNorm statistics and affines (eval mode)."""
    torch.manual_seed(seed)
    model = ShuffleDenseNet().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


@pytest.fixture(scope="module")
def calib():
    return load_dataset(f"tar:{DEMO_DATA}", "train").stratified_subset(10, seed=0)


def _one_channel_slack(gray: nn.Module, plan, size: int = 32) -> float:
    """MACs of one channel of every merged group (the tolerance the planner may leave)."""
    groups = ChannelGraph(gray, torch.zeros(1, 1, size, size)).groups()
    cost = width_cost(gray, groups, (1, size, size))
    full = cost.full["macs"]
    return sum(full - cost.cost({g: cost.channels[g] - 1})["macs"] for g in plan.layers)


def test_half_the_macs_in_one_python_call(calib, one_thread):
    model = make_model()
    comp = Compressor(CompressConfig(seed=0, progress=False), Budget(macs=0.5)).fit(model, "cifar", calib)
    folded, merged = count_macs(comp.folded_, (1, 32, 32)), count_macs(comp.model_, (1, 32, 32))
    assert merged <= 0.5 * folded + _one_channel_slack(comp.folded_, comp.plan_)
    assert merged == pytest.approx(comp.plan_.predicted["macs"], rel=1e-9)  # the planner's cost is the counter's
    assert "conv1" in comp.plan_.layers and "stage2.0.gconv2" in comp.plan_.layers  # both parts of the stream
    assert comp.converted_  # the 3-group 1x1 convs that read the stem's positions were made unequal
    x = torch.rand(4, 1, 32, 32)
    assert torch.isfinite(comp.model_(x)).all()
    summary = comp.summary()
    assert summary["macs"] == merged and summary["plan"]["widths"]["conv1"] < 24


def test_both_budgets_met_together(calib, one_thread):
    comp = Compressor(CompressConfig(seed=0, progress=False), Budget(macs=0.6, params=0.5)).fit(
        make_model(), "cifar", calib)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count_macs(comp.model_, (1, 32, 32)) <= 0.6 * count_macs(comp.folded_, (1, 32, 32)) * (1 + 1e-9)
    assert params(comp.model_) <= 0.5 * params(comp.folded_) + _one_channel_slack(comp.folded_, comp.plan_)


def test_the_first_conv_alone_follows_the_concatenated_stream_position_by_position(one_thread):
    """Exact duplicates among the stem's channels merge with no change in the output."""
    from channel_copies import copy_channels

    model = make_model()
    x = torch.rand(2, 3, 32, 32)
    uses = trace_channel_uses(model, "conv1", x[:1])
    stream = next(u for u in uses if u.path == "stage2.1.gconv2")  # the residual unit writes the stem's positions
    assert sorted(stream.index) == list(range(24)) and stream.index[0] == [0]
    copy_channels(model, uses, [(0, 1), (2, 5)], names=("weight", "bias", "running_mean", "running_var"))
    work, converted = unequal_groups(model, x[:1])
    assert converted == ["stage2.1.gconv1", "stage2.1.gconv2"]
    labels = np.arange(24)
    labels[1], labels[5] = 0, 2
    merged = merge_channels(work, "conv1", np.unique(labels, return_inverse=True)[1], x[:1])
    with torch.no_grad():
        before, after = work(x), merged(x)
    assert merged.conv1.out_channels == 22
    assert float((after - before).abs().max() / before.abs().max()) < 1e-5


def test_the_seeds_default_first_layer_merge_on_a_third_party_class(calib, one_thread):
    comp = Compressor(CompressConfig(layers="first:1", keep=0.5, seed=0, progress=False)).fit(
        make_model(), "cifar", calib)
    assert comp.model_.conv1.out_channels == 12 and comp.config.selection == "fields"
    assert torch.isfinite(comp.model_(torch.rand(2, 1, 32, 32))).all()


def test_saved_and_reloaded_with_the_class_gives_identical_outputs(calib, tmp_path, one_thread):
    comp = Compressor(CompressConfig(seed=0, progress=False), Budget(macs=0.5)).fit(make_model(), "cifar", calib)
    save_checkpoint(tmp_path / "m", comp.model_, {**comp.fold_.checkpoint_meta()})
    back, meta = load_checkpoint(tmp_path / "m", model=ShuffleDenseNet())
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(back.eval()(x), comp.model_(x))
    assert meta["arch"]["name"] == f"{__name__}:ShuffleDenseNet"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "achroma", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_the_cli_with_model_module_name_gives_the_python_calls_model(calib, tmp_path):
    model = make_model()
    torch.save(model.state_dict(), tmp_path / "third_party.pt")
    out = tmp_path / "out"
    done = _cli("compress", "--model", "test_library:ShuffleDenseNet", "--model-args", '{"num_classes": 10}',
                "--weights", str(tmp_path / "third_party.pt"), "--dataset", f"tar:{DEMO_DATA}", "--calib-limit", "10",
                "--test-limit", "5", "--target-macs", "0.5", "--repair", "none", "--no-latency", "--threads", "1",
                "--seed", "0", "--quiet", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    reference = Compressor(CompressConfig(seed=0, progress=False), Budget(macs=0.5)).fit(model, "cifar", calib)
    saved, meta = load_checkpoint(out / "model.safetensors", model=ShuffleDenseNet(num_classes=10))
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(saved.eval()(x), reference.model_(x))  # the same model from the CLI and from Python
    assert meta["compression"]["settings"]["plan"]["widths"] == reference.plan_.widths
    scored = _cli("evaluate", "--model", "test_library:ShuffleDenseNet", "--weights", str(out / "model.safetensors"),
                  "--dataset", f"tar:{DEMO_DATA}", "--mode", "gray", "--json", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["n"] == 2000
    bad = _cli("compress", "--model", "test_library:NoSuchNet", "--dataset", f"tar:{DEMO_DATA}", "--target-macs",
               "0.5", "--out", str(tmp_path / "bad"), cwd=tmp_path)
    assert bad.returncode == 2 and "has no 'NoSuchNet'" in bad.stderr and not (tmp_path / "bad").exists()
