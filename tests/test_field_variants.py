"""Tests for the feature-visualization variants of compute_receptive_fields: point, reduction, jitter, fourier."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from achroma.data import get_normalization
from achroma.fields import ReceptiveFields, initial_images, resolve_conv
from achroma.models import create_model

torch.set_num_threads(1)

DENSE_LAYER = "features.0.2.conv"  # its output is concatenated: no BatchNorm directly follows it


from test_fields import _fields, tiny  # noqa: F401,E402  (the same tiny model and short ascent)


class ConvBN(nn.Module):
    """conv -> BN -> ReLU -> conv, with BN per-channel factors of sign `sign` and huge conv weights.

    The weights are scaled so that the gradients dwarf the 1e-5 guard of the RMS normalization:
    the ascent direction is then exactly the normalized gradient, whatever its scale.
    """

    def __init__(self, sign: float, bias: float = 0.0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.head = nn.Conv2d(4, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 1e6)
            self.conv.bias.zero_()
            self.bn.weight.copy_(sign * (0.5 + torch.rand(4, generator=g) * 2))
            self.bn.bias.fill_(bias)
            self.bn.running_mean.copy_(torch.randn(4, generator=g))
            self.bn.running_var.copy_(0.5 + torch.rand(4, generator=g))
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.bn(self.conv(x))))


def _net_fields(net: nn.Module, **kw) -> np.ndarray:
    """Fields of `net.conv` at 12x12, raw pixels without normalization (stored as float32: ~1e-5 at 128)."""
    return _fields(net, "conv", size=12, normalization=None, **kw).raw


def test_explicit_defaults_are_bit_identical(tiny):
    for layer in ("stem", DENSE_LAYER):
        plain = _fields(tiny, layer, restarts=2)
        explicit = _fields(tiny, layer, restarts=2, point="conv", reduction="mean", jitter=0, parameterization="pixel")
        np.testing.assert_array_equal(plain.raw, explicit.raw)


def test_params_record_the_variants(tiny, tmp_path):
    rf = _fields(tiny, "stem", steps=2)
    assert {k: rf.params[k] for k in ("point", "reduction", "jitter", "parameterization")} == dict(
        point="conv", reduction="mean", jitter=0, parameterization="pixel")
    rf = _fields(tiny, "stem", steps=2, point="act", reduction="center", jitter=2, parameterization="fourier")
    back = ReceptiveFields.load(rf.save(tmp_path / "f.npz"))
    assert {k: back.params[k] for k in ("point", "reduction", "jitter", "parameterization")} == dict(
        point="act", reduction="center", jitter=2, parameterization="fourier")


def test_bn_with_positive_scale_equals_conv_and_negative_scale_mirrors_it():
    pos = ConvBN(+1.0)
    conv = _net_fields(pos, steps=10)
    start = initial_images(0, 0, range(4), 3, 12)
    assert np.abs(conv - start).max() > 1  # the fields moved
    np.testing.assert_allclose(_net_fields(pos, steps=10, point="bn"), conv, rtol=0, atol=1e-4)
    neg = _net_fields(ConvBN(-1.0), steps=10, point="bn")
    assert not np.allclose(neg, conv, atol=1e-2)
    # the map is affine in the image: a negative factor descends exactly as far as the conv climbs
    np.testing.assert_allclose(neg - start, -(conv - start), rtol=0, atol=1e-4)


def test_act_is_relu_of_the_bn_output():
    live = ConvBN(+1.0, bias=1e9)  # every unit far above zero: relu is the identity
    np.testing.assert_allclose(_net_fields(live, steps=6, point="act"), _net_fields(live, steps=6, point="bn"),
                               rtol=0, atol=1e-4)
    dead = ConvBN(+1.0, bias=-1e9)  # every unit far below zero: no gradient, the start image stays
    start = initial_images(0, 0, range(4), 3, 12).astype(np.float32)
    np.testing.assert_array_equal(_net_fields(dead, steps=6, point="act"), start)
    assert not np.allclose(_net_fields(dead, steps=6, point="bn"), start)


def test_bn_point_finds_the_following_batchnorm_in_a_model(tiny):
    # the stem's output is the input of features.0.0.norm (the first dense layer's pre-activation BN);
    # other BNs have 24 channels too: negating that one's scale must mirror the stem's fields
    model = create_model("seed-densenet-tiny")
    model.load_state_dict(tiny.state_dict())
    with torch.no_grad():
        model.features[0][0].norm.weight.fill_(-1.0)
    start = initial_images(0, 0, range(24), 3, 32)
    conv = _fields(tiny, "stem").raw
    np.testing.assert_allclose(_fields(model, "stem", point="bn").raw - start, -(conv - start), rtol=0, atol=1e-3)
    assert np.isfinite(_fields(model, "stem", point="act", steps=3).raw).all()
    with pytest.raises(ValueError, match=DENSE_LAYER.replace(".", r"\.")):
        _fields(tiny, DENSE_LAYER, point="bn")
    with pytest.raises(ValueError, match="no BatchNorm"):
        _fields(tiny, "features.1.conv", point="act")


def _window(conv: nn.Conv2d, size: int) -> tuple[slice, slice]:
    """The input pixels the centre unit of `conv`'s map reads (before clipping to the image)."""
    out = [(size + 2 * p - d * (k - 1) - 1) // s + 1
           for p, d, k, s in zip(conv.padding, conv.dilation, conv.kernel_size, conv.stride)]
    lo = [o // 2 * s - p for o, s, p in zip(out, conv.stride, conv.padding)]
    hi = [a + d * (k - 1) + 1 for a, d, k in zip(lo, conv.dilation, conv.kernel_size)]
    return slice(max(lo[0], 0), hi[0]), slice(max(lo[1], 0), hi[1])


@pytest.mark.parametrize("stride, kernel, padding", [(1, 3, 1), (2, 5, 2)])
def test_center_changes_only_the_centre_units_window(tiny, stride, kernel, padding):
    if stride == 1:
        model, layer, size = tiny, "first", 32
    else:
        torch.manual_seed(0)
        model, layer, size = nn.Sequential(nn.Conv2d(3, 6, kernel, stride, padding), nn.ReLU()), "0", 16
    conv = resolve_conv(model, "stem" if layer == "first" else layer)
    rf = _fields(model, layer, size=size, steps=10, reduction="center")
    start = initial_images(0, 0, range(conv.out_channels), 3, size).astype(np.float32)
    rows, cols = _window(conv, size)
    inside = np.zeros((size, size), dtype=bool)
    inside[rows, cols] = True
    assert inside.sum() == kernel * kernel
    np.testing.assert_array_equal(rf.raw[..., ~inside], start[..., ~inside])
    assert (np.abs(rf.raw[..., inside] - start[..., inside]).max(axis=(1, 2)) > 0.1).all()
    assert not np.array_equal(rf.raw, _fields(model, layer, size=size, steps=10).raw)


def test_fourier_without_steps_is_the_start_image(tiny):
    rf = _fields(tiny, "stem", steps=0, parameterization="fourier")
    start = initial_images(0, 0, range(24), 3, 32)
    np.testing.assert_allclose(rf.raw, start, rtol=0, atol=1e-3)
    model = create_model("seed-densenet-tiny").double()
    model.load_state_dict(tiny.state_dict())
    odd = _fields(model, "stem", steps=0, size=15, parameterization="fourier")
    np.testing.assert_allclose(odd.raw, initial_images(0, 0, range(24), 3, 15), rtol=0, atol=1e-4)


def test_fourier_climbs_and_differs_from_pixel(tiny):
    fourier = _fields(tiny, "stem", steps=20, parameterization="fourier")
    assert not np.allclose(fourier.raw, _fields(tiny, "stem", steps=20).raw, atol=1e-2)
    conv = resolve_conv(tiny, "stem")  # the stem's input is the normalized image
    norm = get_normalization("cifar")
    with torch.no_grad():
        start = torch.from_numpy(initial_images(0, 0, range(24), 3, 32)).float()
        before = conv(norm(start / 255))[range(24), range(24)].mean(dim=(1, 2))
        after = conv(norm(torch.from_numpy(fourier.raw) / 255))[range(24), range(24)].mean(dim=(1, 2))
    assert (after > before).all()


def _low_frequency_share(change: np.ndarray) -> np.ndarray:
    """Per image (N, C, H, W): the share of its energy at spatial frequencies below 1/8 cycle per pixel."""
    power = np.abs(np.fft.fft2(change)) ** 2
    h, w = change.shape[-2:]
    low = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]) < 0.125
    return power[..., low].sum(axis=(1, 2)) / power.sum(axis=(1, 2, 3))


def test_fourier_moves_low_frequencies_more_than_pixel(tiny):
    start = initial_images(0, 0, range(12), 3, 32)
    pixel = _low_frequency_share(_fields(tiny, DENSE_LAYER, steps=10).raw - start)
    fourier = _low_frequency_share(_fields(tiny, DENSE_LAYER, steps=10, parameterization="fourier").raw - start)
    assert (fourier > pixel).all() and fourier.min() > 0.95


def test_jitter_is_deterministic_for_a_seed_and_independent_of_batching(tiny):
    a = _fields(tiny, DENSE_LAYER, jitter=3)
    b = _fields(tiny, DENSE_LAYER, jitter=3)
    np.testing.assert_array_equal(a.raw, b.raw)
    assert not np.allclose(a.raw, _fields(tiny, DENSE_LAYER).raw, atol=1e-3)
    chunked = _fields(tiny, DENSE_LAYER, jitter=3, batch_size=5)
    assert np.abs(chunked.raw - a.raw).max() / 255 < 1e-5
    assert not np.allclose(_fields(tiny, DENSE_LAYER, jitter=3, seed=1).raw, a.raw)


@pytest.mark.parametrize("bad", [dict(point="relu"), dict(reduction="max"), dict(parameterization="cppn"),
                                 dict(jitter=-1), dict(jitter=1.5), dict(jitter=True)])
def test_unknown_values_raise(tiny, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        _fields(tiny, "stem", **bad)


def test_cli_passes_the_variants_through(tmp_path):
    import achroma.cli as cli

    out = tmp_path / "fields"
    assert cli.main(["fields", "--model", "seed-densenet-tiny", "--layer", "first", "--steps", "2", "--out", str(out),
                     "--point", "act", "--reduction", "center", "--jitter", "1", "--parameterization", "fourier"]) == 0
    params = ReceptiveFields.load(out / "fields.npz").params
    assert (params["point"], params["reduction"], params["jitter"], params["parameterization"]) == (
        "act", "center", 1, "fourier")
    with pytest.raises(SystemExit):
        cli.main(["fields", "--model", "seed-densenet-tiny", "--layer", "first", "--out", str(tmp_path / "x"),
                  "--point", "pre"])
