"""Smaller correctness items: one 'first conv', clusters cut by a split, overlapping layers, log output."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from achroma.fold import fold_to_gray
from achroma.models import create_model
from achroma.pipeline import CompressConfig, plan_layers
from achroma.data import get_normalization
from achroma.progress import progress
from achroma.surgery import check_disjoint_groups, merge_channels
from achroma.training.evaluate import first_conv_in_channels

torch.set_num_threads(1)


class HeadRegisteredFirst(nn.Module):
    """Registers a 1x1 conv before the stem, though the stem runs first: registration != forward order."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(8, 8, 1)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.head(torch.relu(self.stem(x))).mean((2, 3)))


def test_first_conv_is_the_first_the_forward_pass_calls_everywhere():
    model = HeadRegisteredFirst().eval()
    assert first_conv_in_channels(model) == 3  # evaluate's channel check
    gray, report = fold_to_gray(model, "cifar")  # the fold
    assert report.layer == "stem" and gray.stem.in_channels == 1
    plans = plan_layers(model, get_normalization("cifar"), 32, CompressConfig(layers="first", keep=0.5))
    assert [p.path for p in plans] == ["stem"]  # the compress plan


class Split(nn.Module):
    """A conv whose 8 channels are split in halves that feed two different convs (as ShuffleNet does)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.left = nn.Conv2d(4, 4, 1)
        self.right = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        a, b = self.conv(x).chunk(2, dim=1)
        return self.fc(torch.cat([self.left(a), self.right(b)], 1).mean((2, 3)))


def test_a_cluster_cut_by_a_split_is_an_error_not_a_partial_merge():
    model = Split().eval()
    x = torch.rand(1, 1, 8, 8)
    labels = np.array([0, 1, 2, 3, 3, 4, 5, 6])  # channels 3 and 4 sit in different halves
    with pytest.raises(ValueError, match="straddles the parts"):
        merge_channels(model, "conv", labels, x)
    within = merge_channels(model, "conv", np.array([0, 0, 1, 2, 3, 4, 5, 5]), x)  # whole halves merge
    assert within.left.in_channels == 3 and within.right.in_channels == 3


def test_layers_that_write_one_channel_group_are_refused_in_the_plan():
    model = create_model("resnet-cifar-20").eval()
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="conv1 and layer1.1.conv2 write the same channels"):
        check_disjoint_groups(model, ["conv1", "layer1.0.conv1", "layer1.1.conv2"], x)
    check_disjoint_groups(model, ["conv1", "layer1.0.conv1", "layer2.0.conv1"], x)  # distinct groups pass
    with pytest.raises(ValueError, match="write the same channels"):
        plan_layers(model, get_normalization("cifar"), 32, CompressConfig(layers="conv1,layer1.2.conv2", keep=0.5))


def test_progress_in_a_log_file_is_lines_not_carriage_return_frames():
    log = io.StringIO()
    bar = progress(range(50), desc="evaluate", stream=log)
    for _ in bar:
        pass
    counter = progress(total=10, desc="fields stem", stream=log)
    counter.update(10)
    counter.set_postfix(loss="0.1")
    counter.close()
    text = log.getvalue()
    assert "\r" not in text
    assert text.splitlines() == [line for line in text.splitlines() if line.strip()]
    assert len(text.splitlines()) == 4 and "evaluate: done, 50 steps" in text and "loss=0.1" in text


def test_compress_cli_writes_no_carriage_returns_to_a_log(tmp_path):
    """The whole CLI through a pipe (not a terminal): progress comes as lines."""
    result = subprocess.run([sys.executable, "-m", "achroma.cli", "fields", "--weights",
                             str(_demo_weights()), "--layer", "first", "--steps", "3", "--out", str(tmp_path / "f")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\r" not in result.stderr and "fields stem: done" in result.stderr


def _demo_weights():
    from achroma.demo import default_model_path

    return default_model_path()


class SplitNorms(nn.Module):
    """A conv whose halves are normalized by two different BNs (found in review: the second half's
    channels had no scale and the merge crashed)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bna, self.bnb = nn.BatchNorm2d(2), nn.BatchNorm2d(2)
        self.c2 = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        a, b = self.c1(x).chunk(2, dim=1)
        return self.c2(torch.relu(torch.cat([self.bna(a), self.bnb(b)], 1))).mean((2, 3))


def test_members_normalized_by_different_bns_of_a_split_merge_exactly():
    model = SplitNorms().double().eval()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        for bn in (model.bna, model.bnb):
            bn.running_var.copy_(torch.tensor([0.5, 2.0], dtype=torch.float64))
            bn.running_mean.copy_(torch.tensor([0.1, 0.2], dtype=torch.float64))
        model.c1.weight[1] = 2 * model.c1.weight[0]  # channel 1 = 2 x channel 0, BN std 2 x (var 4 x)
        model.c1.bias[1] = 2 * model.c1.bias[0]
        model.c1.weight[3], model.c1.bias[3] = 2 * model.c1.weight[2], 2 * model.c1.bias[2]
        model.bna.running_var[1] = 4 * (model.bna.running_var[0] + model.bna.eps) - model.bna.eps
        model.bnb.running_var[1] = 4 * (model.bnb.running_var[0] + model.bnb.eps) - model.bnb.eps
        model.bna.running_mean[1], model.bnb.running_mean[1] = 2 * model.bna.running_mean[0], 2 * model.bnb.running_mean[0]
        reference = model(x)
    merged = merge_channels(model, "c1", np.array([0, 0, 1, 1]), x)
    with torch.no_grad():
        assert (merged(x) - reference).abs().max() <= 1e-9 * reference.abs().max()


def test_caches_made_in_inference_mode_serve_a_training_step():
    from achroma.fold import BorderCorrectedConv2d
    from achroma.surgery import ChannelMapShortcut

    conv = BorderCorrectedConv2d(1, 4, 3, padding=1)
    shortcut = ChannelMapShortcut(torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 0.0]]))
    x = torch.rand(2, 1, 8, 8)
    with torch.inference_mode():
        conv(x), shortcut(torch.rand(2, 2, 4, 4))
    y = torch.rand(2, 2, 4, 4, requires_grad=True)
    (conv(x).sum() + shortcut(y).sum()).backward()
    assert conv.bias.grad is not None and y.grad is not None
    with torch.inference_mode():  # a module made in inference mode: no version counters, no cache
        fresh = BorderCorrectedConv2d(1, 4, 3, padding=1).eval()
        assert fresh(x).shape == (2, 4, 8, 8) and fresh(x).shape == (2, 4, 8, 8)
