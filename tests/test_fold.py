"""Tests for achroma.fold: a color model folded into a 1-channel model on raw gray input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from achroma.data import get_normalization
from achroma.fold import BorderCorrectedConv2d, fold_to_gray
from achroma.io import read_checkpoint_meta, save_checkpoint
from achroma.models import create_model, load_state_dict_file, load_weights
from achroma.surgery import merge_channels, resize_to_state_dict, trace_channel_uses

torch.set_num_threads(1)

FAMILIES = ["seed-densenet", "seed-densenet-tiny", "densenet-bc-100", "resnet-cifar-20",
            "tv:resnet18", "tv:densenet121", "tv:mobilenet_v2"]
FIRST_CONV = {"seed-densenet": "stem", "seed-densenet-tiny": "stem", "densenet-bc-100": "stem",
              "resnet-cifar-20": "conv1", "tv:resnet18": "conv1", "tv:densenet121": "features.conv0",
              "tv:mobilenet_v2": "features.0.0"}


def _gray(n: int = 2, size: int = 32, seed: int = 3, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name).double().eval()


@torch.no_grad()
def _first_conv_outputs(color: nn.Module, gray: nn.Module, path: str, g: torch.Tensor, norm) -> tuple:
    """The first conv's output in both models: color on the normalized 3-channel copy, gray on raw g."""
    seen = {}
    hooks = [color.get_submodule(path).register_forward_hook(lambda m, i, o: seen.__setitem__("c", o)),
             gray.get_submodule(path).register_forward_hook(lambda m, i, o: seen.__setitem__("g", o))]
    logits = color(norm(g.expand(-1, 3, -1, -1))), gray(g)
    for h in hooks:
        h.remove()
    return seen["c"], seen["g"], logits


@pytest.mark.parametrize("name", FAMILIES)
def test_fold_interior_exact_and_exact_border(name):
    model = _model(name)
    g = _gray()
    norm = get_normalization("cifar")
    plain, report = fold_to_gray(model, "cifar", border="bias", example_input=g)
    assert report.layer == FIRST_CONV[name]
    conv = plain.get_submodule(report.layer)
    assert conv.in_channels == 1 and conv.bias is not None
    out_c, out_g, (logit_c, logit_g) = _first_conv_outputs(model, plain, report.layer, g, norm)
    # away from the border (2 output pixels in covers every kernel here) the plain fold is exact
    assert (out_c - out_g)[..., 2:-2, 2:-2].abs().max().item() < 1e-5
    assert report.max_abs_interior_diff < 1e-5
    assert report.max_abs_border_diff > 1e-3  # zero padding of normalized input != of raw gray
    assert report.notes and "border='exact'" in report.notes[0]

    exact, report_x = fold_to_gray(model, "cifar", border="exact", example_input=g)
    assert isinstance(exact.get_submodule(report.layer), BorderCorrectedConv2d)
    out_c, out_g, (logit_c, logit_g) = _first_conv_outputs(model, exact, report.layer, g, norm)
    assert (out_c - out_g).abs().max().item() < 1e-5
    assert (logit_c - logit_g).abs().max().item() < 1e-5
    assert report_x.max_abs_logit_diff < 1e-5 and report_x.max_abs_border_diff < 1e-5


def test_fold_formula_by_hand():
    """weight = sum_c w_c / s_c, bias = b - sum_{c,k} w_c[k] m_c / s_c."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=True), nn.Flatten(), nn.Linear(4 * 8 * 8, 2)).double()
    norm = get_normalization("0.4,0.5,0.6:0.2,0.25,0.3")
    gray, _ = fold_to_gray(model, norm, example_input=_gray(size=8))
    w, b = model[0].weight, model[0].bias
    mean, std = torch.tensor([0.4, 0.5, 0.6], dtype=torch.float64), torch.tensor([0.2, 0.25, 0.3], dtype=torch.float64)
    assert torch.allclose(gray[0].weight, (w / std.view(1, 3, 1, 1)).sum(1, keepdim=True))
    assert torch.allclose(gray[0].bias, b - (w * (mean / std).view(1, 3, 1, 1)).sum((1, 2, 3)))


def test_equal_means_and_unpadded_convs_are_reported():
    model = _model("resnet-cifar-20")
    _, report = fold_to_gray(model, "half", border="bias", example_input=_gray())
    assert "padding raw gray with 0.5" in report.notes[0]
    unpadded = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()).double()
    _, report = fold_to_gray(unpadded, "cifar", border="bias", example_input=_gray(size=8))
    assert report.max_abs_logit_diff < 1e-10 and report.border_pixels == 0
    assert "exact everywhere" in report.notes[0]


def test_fold_keeps_input_model_and_sets_gray_metadata(tmp_path):
    model = _model("seed-densenet-tiny").float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gray, report = fold_to_gray(model, "cifar", border="exact")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.stem.in_channels == 3
    meta = report.checkpoint_meta()
    assert meta["mode"] == "gray" and meta["normalization"] == {"mean": [0.0], "std": [1.0]}
    assert meta["surgery"] is True and meta["fold"]["border"] == "exact"
    assert gray.achroma_arch["in_chans"] == 1

    weights = save_checkpoint(tmp_path / "gray", gray, meta)
    saved = read_checkpoint_meta(tmp_path / "gray")
    assert saved["mode"] == "gray" and saved["normalization"]["std"] == [1.0]
    arch = dict(saved["arch"])
    fresh = create_model(arch.pop("name"), **arch)
    resize_to_state_dict(fresh, load_state_dict_file(weights))
    load_weights(fresh, weights)
    x = _gray(dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), gray.eval()(x))


def test_folded_exact_model_merges_duplicates_exactly():
    """The border kernel is per output channel: merging averages it with the filters."""
    model = _model("seed-densenet-tiny")
    gray, _ = fold_to_gray(model, "cifar", border="exact", example_input=_gray())
    x = _gray()
    uses = trace_channel_uses(gray, "stem", x)
    modules = dict(gray.named_modules())
    with torch.no_grad():
        for use in uses:
            if use.role == "producer":
                for name in ("weight", "bias", "running_mean", "running_var", "border_kernel"):
                    t = getattr(modules[use.path], name, None)
                    if isinstance(t, torch.Tensor):
                        t[use.index[9]] = t[use.index[4]]
        for m in gray.modules():  # random BN statistics so that BN entries matter
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
        for use in uses:  # ...then copy them again where the channel is normalized
            m = modules[use.path]
            if isinstance(m, nn.BatchNorm2d):
                m.running_var[use.index[9]] = m.running_var[use.index[4]]
    labels = np.unique(np.where(np.arange(24) == 9, 4, np.arange(24)), return_inverse=True)[1]
    merged = merge_channels(gray, "stem", labels, x)
    assert merged.stem.border_kernel.shape[0] == 23
    with torch.no_grad():
        assert (merged(x) - gray(x)).abs().max().item() < 1e-10


def test_first_layer_must_be_a_conv():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(ValueError, match="is a BatchNorm2d, not a Conv2d"):
        fold_to_gray(model, "cifar")
    with pytest.raises(ValueError, match="is a Flatten, not a Conv2d"):
        fold_to_gray(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2)), "cifar")


def test_input_transformed_before_first_conv():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x * 2)

    with pytest.raises(ValueError, match="does not read the raw input"):
        fold_to_gray(Scaled(), "cifar")


def test_bad_border_and_probe():
    model = create_model("resnet-cifar-20")
    with pytest.raises(ValueError, match="border must be"):
        fold_to_gray(model, "cifar", border="zero")
    with pytest.raises(ValueError, match=r"gray batch \(B, 1, H, W\)"):
        fold_to_gray(model, "cifar", example_input=torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize("name", ["seed-densenet-tiny", "resnet-cifar-20", "tv:mobilenet_v2"])
def test_fold_is_exact_in_float64(name):
    """In float64 the fold (border included) matches the color model to float64 precision, not float32's."""
    model = _model(name)
    g = _gray()
    gray, report = fold_to_gray(model, "cifar", border="exact", example_input=g)
    conv = gray.get_submodule(report.layer)
    assert all(t.dtype == torch.float64 for t in (conv.weight, conv.bias, conv.border_kernel))
    norm = get_normalization("cifar")
    with torch.no_grad():
        color, folded = model(norm(g.expand(-1, 3, -1, -1))), gray(g)
    assert (color - folded).abs().max().item() <= 1e-10 * color.abs().max().item()


def _placement(model: nn.Module) -> set:
    return {(t.device.type, t.dtype) for t in list(model.parameters()) + list(model.buffers())
            if t.is_floating_point()}


@pytest.mark.parametrize("name,layer", [("resnet-cifar-20", "layer2.0.conv2"), ("seed-densenet-tiny", "stem")])
def test_fold_and_merge_create_tensors_on_the_models_device_and_dtype(name, layer):
    """On the `meta` device (no GPU needed) every tensor the fold and the merge create must follow the model."""
    with torch.device("meta"):
        model = create_model(name).double().eval()
    gray, report = fold_to_gray(model, "cifar", example_input=torch.rand(2, 1, 32, 32, device="meta",
                                                                           dtype=torch.float64))
    assert _placement(gray) == {("meta", torch.float64)}
    assert "meta device" in report.notes[0]
    x = torch.rand(2, 1, 32, 32, device="meta", dtype=torch.float64)
    n = gray.get_submodule(layer).out_channels
    merged = merge_channels(gray, layer, np.arange(n) // 2, x)
    assert _placement(merged) == {("meta", torch.float64)}
    assert merged(x).shape == (2, 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
def test_fold_and_merge_on_cuda_match_the_cpu():
    model = _model("resnet-cifar-20").float()
    g = _gray(dtype=torch.float32)
    cpu_gray, _ = fold_to_gray(model, "cifar", example_input=g)
    cuda_gray, report = fold_to_gray(model.cuda(), "cifar", example_input=g.cuda())
    assert _placement(cuda_gray) == {("cuda", torch.float32)}
    assert report.max_abs_logit_diff < 1e-4
    labels = np.arange(32) // 2
    merged_cpu = merge_channels(cpu_gray, "layer2.0.conv2", labels, g)
    merged_cuda = merge_channels(cuda_gray, "layer2.0.conv2", labels, g.cuda())
    with torch.no_grad():
        assert torch.allclose(merged_cpu(g), merged_cuda(g.cuda()).cpu(), atol=1e-4)


def test_border_map_is_computed_once_per_input_size_and_follows_edits():
    """At inference the border correction costs nothing per image: one conv's MACs, as a plain conv."""
    from torch.utils.flop_counter import FlopCounterMode

    conv = BorderCorrectedConv2d(1, 4, 3, padding=1).eval()
    plain = nn.Conv2d(1, 4, 3, padding=1).eval()
    with torch.no_grad():
        conv.border_kernel.uniform_(-1, 1)
        x = torch.rand(1, 1, 16, 16)
        first = conv(x)
        with FlopCounterMode(display=False) as counted:
            again = conv(x)
        with FlopCounterMode(display=False) as reference:
            plain(x)
        assert counted.get_total_flops() == reference.get_total_flops()
        assert torch.equal(first, again)
        expected = conv._conv_forward(x, conv.weight, conv.bias) + conv.border_correction(x)
        assert torch.allclose(again, expected, atol=1e-6)
        conv.border_kernel.mul_(2)  # an in-place edit must not leave a stale map
        assert torch.allclose(conv(x), conv._conv_forward(x, conv.weight, conv.bias) + conv.border_correction(x),
                              atol=1e-6)
        y = torch.rand(2, 1, 8, 8)  # another size gets its own map
        assert torch.allclose(conv(y), conv._conv_forward(y, conv.weight, conv.bias) + conv.border_correction(y),
                              atol=1e-6)
        expected = conv._conv_forward(x, conv.weight, conv.bias) + conv.border_correction(x)
    with torch.inference_mode():
        assert torch.allclose(conv(x), expected, atol=1e-6)
    x.requires_grad_(True)
    conv(x).sum().backward()  # with gradients on, no cached tensor enters the graph
    assert x.grad is not None and conv.weight.grad is not None
