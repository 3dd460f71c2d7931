"""Fold a color model into a 1-channel model that takes raw [0, 1] gray images.

A gray image copied to C channels and normalized per channel, (g - m_c) / s_c, feeds the first
conv; that conv is linear, so it equals a 1-channel conv with weight sum_c w_c / s_c on the raw
gray image plus a bias shift of -sum_{c,k} w_c[k] m_c / s_c. Exact inside the image. At the border
the color model zero-pads the *normalized* input (raw value m_c, one per channel); the folded conv
zero-pads raw gray. border='bias' keeps the plain fold (error reported); border='exact' adds back
the missing padding taps (see `BorderCorrectedConv2d`), and is the default: on a trained model the
border error is not small (it flipped a quarter of the predictions of an early demo checkpoint).
A single raw padding value g0 fixes the border only when all channel means are equal (g0 = m);
CIFAR/ImageNet means are not, hence the fixed correction term instead.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import Normalization, get_normalization
from ..models.inspect import input_channels
from .border import BorderCorrectedConv2d, conv_padding

Border = Literal["bias", "exact"]
GRAY_NORMALIZATION = Normalization((0.0,), (1.0,))


@dataclass
class FoldReport:
    """What the fold did and how far the gray model is from the color model on gray input."""

    layer: str
    border: str
    color_normalization: dict[str, list[float]]
    probe_shape: list[int]
    max_abs_logit_diff: float
    max_abs_border_diff: float
    max_abs_interior_diff: float
    border_pixels: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def checkpoint_meta(self) -> dict[str, Any]:
        """Metadata for `save_checkpoint`: gray mode, no normalization, rebuilt via `surgery`."""
        return {"mode": "gray", "normalization": GRAY_NORMALIZATION.to_dict(), "surgery": True, "fold": self.to_dict()}


def find_input_conv(model: nn.Module, example: torch.Tensor) -> tuple[str, nn.Conv2d]:
    """(path, module) of the layer that first reads the model input; ValueError unless a Conv2d."""
    names = {m: n for n, m in model.named_modules()}
    calls: list[tuple[nn.Module, bool]] = []

    def hook(module: nn.Module, inputs: tuple) -> None:
        calls.append((module, any(t is example for t in inputs)))

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_pre_hook(hook) for m in leaves]
    was_training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    except RuntimeError as err:
        raise ValueError(f"cannot run the model on a probe of shape {tuple(example.shape)}: {err}") from err
    finally:
        for h in handles:
            h.remove()
        for m, flag in was_training.items():
            m.training = flag
    if not calls:
        raise ValueError("the model ran no layers on the input; cannot find its first conv")
    first, reads_input = calls[0]
    kind = type(first).__name__
    if not isinstance(first, nn.Conv2d):
        raise ValueError(f"the first layer ({names.get(first, '?')}) is a {kind}, not a Conv2d: cannot fold to gray")
    if not reads_input:
        raise ValueError(f"the first conv ({names[first]}) does not read the raw input (it is transformed first)")
    readers = {names.get(m) for m, reads in calls if reads}
    if len(readers) > 1:
        raise ValueError(f"several layers read the input directly ({', '.join(sorted(map(str, readers)))}): "
                         "cannot fold one conv")
    if first.groups != 1:
        raise ValueError(f"the first conv ({names[first]}) is grouped (groups={first.groups}); folding needs groups=1")
    return names[first], first


def _folded_conv(conv: nn.Conv2d, norm: Normalization, border: Border) -> nn.Conv2d:
    """A 1-input-channel conv (with bias) computing `conv` on the normalized C-fold copy of its input."""
    c = conv.in_channels
    w = conv.weight.detach().double()  # fold in float64 on the conv's device, store in its dtype
    mean = torch.tensor(norm.mean, dtype=torch.float64, device=w.device).view(1, c, 1, 1)
    std = torch.tensor(norm.std, dtype=torch.float64, device=w.device).view(1, c, 1, 1)
    weight = (w / std).sum(1, keepdim=True)
    shift = (w * mean / std).sum(1, keepdim=True)  # M[k]: what one tap adds for a mean-valued pixel
    bias = -shift.sum((1, 2, 3))
    if conv.bias is not None:
        bias = bias + conv.bias.detach().double()
    pads = conv_padding(conv) if conv.padding_mode == "zeros" else (0, 0, 0, 0)
    exact = border == "exact" and any(pads)
    cls = BorderCorrectedConv2d if exact else nn.Conv2d
    new = cls(1, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
              dilation=conv.dilation, groups=1, bias=True, padding_mode=conv.padding_mode,
              device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)
        if exact:
            new.border_kernel.copy_(shift)
    new.train(conv.training)
    return new


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


@torch.no_grad()
def _measure(color: nn.Module, gray: nn.Module, path: str, norm: Normalization, probe: torch.Tensor) -> dict:
    """Max abs differences: logits, and the first conv's output on and off the border.

    On the `meta` device (shapes only, no values) nothing can be measured: NaN, and a note.
    """
    if probe.device.type == "meta":
        nan = float("nan")
        return {"max_abs_logit_diff": nan, "max_abs_border_diff": nan, "max_abs_interior_diff": nan,
                "border_pixels": 0}
    outputs: dict[str, torch.Tensor] = {}
    hooks = [m.get_submodule(path).register_forward_hook(lambda _m, _i, o, k=k: outputs.__setitem__(k, o))
             for k, m in (("color", color), ("gray", gray))]
    flags = {m: m.training for net in (color, gray) for m in net.modules()}
    try:
        color.eval(), gray.eval()
        c = color.get_submodule(path).in_channels
        logit_c = color(norm(probe.expand(-1, c, -1, -1)))
        logit_g = gray(probe)
    finally:
        for h in hooks:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
    conv = gray.get_submodule(path)
    pads = conv_padding(conv) if conv.padding_mode == "zeros" else (0, 0, 0, 0)
    mask = F.pad(probe.new_zeros(1, 1, *probe.shape[-2:]), pads, value=1.0)
    ones = probe.new_ones(1, 1, *conv.kernel_size)
    on_border = (F.conv2d(mask, ones, None, conv.stride, 0, conv.dilation) > 0)[0, 0]
    diff = (outputs["color"] - outputs["gray"]).abs()
    border_diff = diff[..., on_border]
    inner_diff = diff[..., ~on_border]
    return {
        "max_abs_logit_diff": float((logit_c - logit_g).abs().max()),
        "max_abs_border_diff": float(border_diff.max()) if border_diff.numel() else 0.0,
        "max_abs_interior_diff": float(inner_diff.max()) if inner_diff.numel() else 0.0,
        "border_pixels": int(on_border.sum()),
    }


def fold_to_gray(
    model: nn.Module,
    normalization: str | dict | Normalization | None,
    border: Border = "exact",
    example_input: torch.Tensor | None = None,
) -> tuple[nn.Module, FoldReport]:
    """(gray model, report): a copy of `model` whose first conv takes one raw [0, 1] gray channel.

    `normalization` is the color model's input normalization (preset name, dict or Normalization).
    border='exact' (default) matches the color model everywhere; 'bias' is the plain fold, a plain
    Conv2d with bias, which differs in the output pixels whose window touches the padding.
    `example_input` is a gray probe batch (B, 1, H, W) in [0, 1] used to find the first conv and to
    measure the fold's error (default: 2 random 32x32 images). The input model is not modified.
    """
    if border not in ("bias", "exact"):
        raise ValueError(f"border must be 'bias' or 'exact', got {border!r}")
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if example_input is None:
        example_input = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    probe = example_input.to(device=device, dtype=dtype)
    if probe.ndim != 4 or probe.shape[1] != 1:
        raise ValueError(f"example_input must be a gray batch (B, 1, H, W), got shape {tuple(probe.shape)}")
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    channels = input_channels(model, int(probe.shape[-1])) if has_conv else 3  # else find_input_conv says why
    norm = get_normalization(normalization).for_channels(channels)
    path, conv = find_input_conv(model, norm(probe.expand(-1, channels, -1, -1)))
    norm = get_normalization(normalization).for_channels(conv.in_channels)

    gray = copy.deepcopy(model)
    _replace(gray, path, _folded_conv(conv, norm, border))
    arch = getattr(model, "achroma_arch", None)
    if arch is not None:
        # a registry model is rebuilt with one input channel; a user's class ('module:Name') with its own
        # arguments, its first conv then resized to the stored weights (surgery.resize_to_state_dict)
        from ..models.registry import is_import_path

        gray.achroma_arch = dict(arch) if is_import_path(arch.get("name", "")) else {**arch, "in_chans": 1}
    gray.achroma_surgery = True

    stats = _measure(model, gray, path, norm, probe)
    notes = []
    if probe.device.type == "meta":
        notes.append("meta device: the fold's error was not measured")
    if conv.padding_mode != "zeros" or not any(conv_padding(conv)):
        notes.append("first conv does not zero-pad: the plain fold is exact everywhere")
    elif border == "bias":
        equal = len(set(norm.mean)) == 1
        notes.append("border error comes from zero padding of the normalized color input; "
                     + (f"padding raw gray with {norm.mean[0]:g} would remove it" if equal
                        else "no single gray padding value removes it (channel means differ): use border='exact'"))
    else:
        notes.append("border taps corrected exactly by a fixed per-position term (BorderCorrectedConv2d)")
    report = FoldReport(layer=path, border=border, color_normalization=norm.to_dict(),
                        probe_shape=list(probe.shape), notes=notes, **stats)
    return gray, report
