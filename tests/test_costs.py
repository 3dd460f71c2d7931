"""MACs by torch's FlopCounter against closed-form counts, and merges that never add compute."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from achroma.fold import fold_to_gray
from achroma.models import create_model
from achroma.report import count_macs
from achroma.surgery import ChannelMapShortcut, convert_shortcuts, merge_channels

torch.set_num_threads(1)


def conv_macs(c_in: int, c_out: int, k: int, side: int) -> int:
    """A k x k conv producing a side x side map: every output element costs c_in * k * k MACs."""
    return c_in * c_out * k * k * side * side


def resnet_cifar_macs(widths=(16, 32, 64), blocks: int = 3, classes: int = 10, in_ch: int = 3,
                      stem: int | None = None) -> int:
    """He et al.'s CIFAR ResNet-(6n+2): 3x3 stem, 3 stages of n blocks of two 3x3 convs, option-A
    shortcuts (no MACs), linear head. `stem`: the stage-1 residual stream's width when it differs
    (a merged stream; the blocks' inner convs keep theirs)."""
    stream = stem or widths[0]
    total = conv_macs(in_ch, stream, 3, 32)
    c_in, side = stream, 32
    for stage, width in enumerate(widths):
        out = stream if stage == 0 else width
        for b in range(blocks):
            if b == 0 and stage > 0:
                side //= 2
            total += conv_macs(c_in, width, 3, side) + conv_macs(width, out, 3, side)
            c_in = out
    return total + c_in * classes


def densenet_bc_macs(depth: int = 100, growth: int = 12, classes: int = 10) -> int:
    """DenseNet-BC for 32x32: 3x3 stem to 2k, blocks of (1x1 to 4k, 3x3 to k), transitions halving
    channels with a 1x1 conv then 2x2 average pooling, linear head."""
    n = (depth - 4) // 6
    channels, side = 2 * growth, 32
    total = conv_macs(3, channels, 3, side)
    for block in range(3):
        for j in range(n):
            total += conv_macs(channels + j * growth, 4 * growth, 1, side) + conv_macs(4 * growth, growth, 3, side)
        channels += n * growth
        if block < 2:
            total += conv_macs(channels, channels // 2, 1, side)
            channels //= 2
            side //= 2
    return total + channels * classes


# torchvision resnet18 at 224x224, by hand: stem 7x7/2 (112) 118,013,952; layer1 4 x 3x3 64->64 at 56
# 462,422,016; layers 2-4 each 3x3/2 57,802,752 + 3 x 3x3 115,605,504 + 1x1/2 downsample 6,422,528;
# fc 512 x 1000. The published figure is 1.81 GMACs.
RESNET18_MACS = 118_013_952 + 462_422_016 + 3 * (57_802_752 + 3 * 115_605_504 + 6_422_528) + 512_000


def test_resnet_cifar_20_count_matches_the_formula():
    assert count_macs(create_model("resnet-cifar-20"), (3, 32, 32)) == resnet_cifar_macs() == 40_551_040  # the published 40.55M


def test_densenet_bc_100_count_matches_the_formula():
    assert count_macs(create_model("densenet-bc-100"), (3, 32, 32)) == densenet_bc_macs()


def test_torchvision_resnet18_count_matches_the_formula():
    model = torchvision.models.resnet18(weights=None)
    assert count_macs(model, (3, 224, 224)) == RESNET18_MACS == 1_814_073_344


def test_folded_model_costs_its_gray_first_conv_only():
    color = create_model("resnet-cifar-20").eval()
    gray, _ = fold_to_gray(color, "cifar")
    assert count_macs(gray, (1, 32, 32)) == resnet_cifar_macs(in_ch=1)


def test_option_a_shortcuts_as_channel_maps_cost_nothing():
    model = create_model("resnet-cifar-20").eval()
    converted = convert_shortcuts(create_model("resnet-cifar-20").eval())
    converted.load_state_dict(model.state_dict(), strict=False)
    assert any(isinstance(m, ChannelMapShortcut) for m in converted.modules())
    assert count_macs(converted, (3, 32, 32)) == count_macs(model, (3, 32, 32))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(converted(x), model(x))


@pytest.mark.parametrize("layer,stem", [("layer1.0.conv1", None), ("conv1", 8)])
def test_a_merge_never_adds_compute(layer, stem):
    """One filter merged away must lower the count; the stage-1 stream merge equals the formula."""
    gray, _ = fold_to_gray(create_model("resnet-cifar-20").eval(), "cifar")
    x = torch.rand(1, 1, 32, 32)
    n = gray.get_submodule(layer).out_channels
    labels = np.arange(n) if stem is None else np.arange(n) // 2
    if stem is None:
        labels[1] = 0
        labels = np.unique(labels, return_inverse=True)[1]
    merged = merge_channels(gray, layer, labels, x)
    before, after = count_macs(gray, (1, 32, 32)), count_macs(merged, (1, 32, 32))
    assert after < before
    if stem is not None:
        assert after == resnet_cifar_macs(in_ch=1, stem=stem)
    else:  # one of 16 filters of a 3x3 conv gone, and its input slice in the next conv
        assert before - after == 2 * conv_macs(16, 1, 3, 32)


def test_merged_channel_map_matches_the_dense_map():
    """The gather the map runs as equals the dense map it stands for, also after its rows are averaged."""
    torch.manual_seed(0)
    matrix = torch.zeros(6, 4)
    matrix[1, 0] = matrix[2, 1] = matrix[4, 3] = 1.0
    matrix[3, [1, 2]] = 0.5
    shortcut = ChannelMapShortcut(matrix, stride=2)
    x = torch.randn(3, 4, 8, 8)
    dense = torch.nn.functional.conv2d(x[:, :, ::2, ::2], matrix[:, :, None, None])
    assert torch.allclose(shortcut(x), dense, atol=1e-6)
    with torch.no_grad():
        shortcut.matrix[5, 0] = 2.0  # an in-place edit refreshes the plan
    dense = torch.nn.functional.conv2d(x[:, :, ::2, ::2], shortcut.matrix[:, :, None, None])
    assert torch.allclose(shortcut(x), dense, atol=1e-6)


def test_work_outside_conv_and_linear_modules_is_counted():
    """A functional conv or a bare matrix product (no Conv2d/Linear module) costs MACs too."""
    class Functional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.kernel = torch.nn.Parameter(torch.randn(8, 3, 3, 3))
            self.head = torch.nn.Parameter(torch.randn(8, 10))

        def forward(self, x):
            y = torch.nn.functional.conv2d(x, self.kernel, padding=1)
            return y.mean((2, 3)) @ self.head

    assert count_macs(Functional(), (3, 16, 16)) == conv_macs(3, 8, 3, 16) + 8 * 10


def test_merged_resnet_count_equals_an_independent_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    gray, _ = fold_to_gray(create_model("resnet-cifar-20").eval(), "cifar")
    merged = merge_channels(gray, "layer2.0.conv2", np.arange(32) // 2, torch.rand(1, 1, 32, 32))
    x = torch.zeros(1, 1, 32, 32)
    with torch.no_grad():
        merged(x)
        with FlopCounterMode(display=False) as counter:
            merged(x)
    assert 2 * count_macs(merged, (1, 32, 32)) == counter.get_total_flops()
