"""`BorderCorrectedConv2d`: the folded first conv that stays exact at the image border.

Zero padding of the *normalized* color input is padding with the per-channel mean in raw pixel
units, one value per channel; a 1-channel gray input cannot be padded with three values at once.
With mean m_c and std s_c, the folded conv on zero-padded raw gray lacks, at each output pixel,
sum over the kernel taps that fall on padding of M[k] = sum_c w_c[k] m_c / s_c. That term depends
only on where the output pixel lies, so it is a fixed tensor: the convolution of a mask (1 on the
padding, 0 inside) with the kernel M, which this layer adds back (`border_kernel` holds M).

The term is one fixed per-position map (zero away from the border). It is computed once per input
size (and device, dtype, kernel version) and cached, so a forward pass costs what a plain conv
with bias costs, plus one addition.

Where the map is added (issue 23): the conv keeps its own bias and the map holds the border term
only, so the conv's output is centred as the color model's is (int8 quantization calibrates the
conv's output range; with the bias moved into the map, the bias-free output carried an offset of
about sum(M) and ONNX Runtime's int8 export lost a sixth of the demo model's predictions). A
following BatchNorm is folded into this layer by `achroma.deploy.fuse` (weight, bias and border
kernel scaled per output channel), so the deployed graph is Conv -> Add(map) -> ReLU with no
BatchNormalization left between. For ONNX export, `BorderMaskConv2d` moves the correction to the
conv's input instead: ONNX Runtime lays convs out in blocked channels (NCHWc) and a per-position Add
after the conv forced a reorder to NCHW and back (4 more nodes for ResNet-20, which ran 0.91-0.95x
the color model); a mask channel beside the padded image keeps the first conv one fused conv.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """The (left, right, top, bottom) zero padding a Conv2d applies, for int or 'same'/'valid' padding."""
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":
        pads: list[int] = []
        for k, d in zip(reversed(conv.kernel_size), reversed(conv.dilation)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)  # type: ignore[return-value]
    ph, pw = conv.padding
    return (pw, pw, ph, ph)


def _identity(t: torch.Tensor) -> tuple | None:
    """What changes when a tensor is replaced or edited in place (not through `.data`); None when it
    cannot be told (inference tensors keep no version counter): then nothing may be cached."""
    if t.is_inference():
        return None
    return id(t), t.data_ptr(), t._version


def exporting() -> bool:
    """True inside torch.export / torch.onnx.export (fake tensors: values cannot be read or checked)."""
    return torch.compiler.is_exporting()


class BorderCorrectedConv2d(nn.Conv2d):
    """A Conv2d plus a fixed per-position correction for the taps that fall on its zero padding.

    out = conv(x) + conv2d(pad(zeros, value=1), border_kernel): exact emulation of a conv whose
    input was padded with a different constant per folded input channel.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError("BorderCorrectedConv2d needs padding_mode='zeros'")
        if self.groups != 1:
            raise ValueError("BorderCorrectedConv2d needs groups=1")
        self.register_buffer("border_kernel", torch.zeros(self.out_channels, 1, *self.kernel_size,
                                                          device=self.weight.device, dtype=self.weight.dtype))
        self._bias_maps: dict[tuple, torch.Tensor] = {}

    def border_correction(self, x: torch.Tensor) -> torch.Tensor:
        """(1, out_channels, H', W'): what the padding taps would have contributed."""
        mask = F.pad(x.new_zeros(1, 1, *x.shape[-2:]), conv_padding(self), value=1.0)
        return F.conv2d(mask, self.border_kernel.to(x.dtype), None, self.stride, 0, self.dilation)

    def bias_map(self, x: torch.Tensor) -> torch.Tensor:
        """(1, out_channels, H', W'): the border correction for inputs shaped like `x`, cached (the
        conv's own bias is applied by the conv).

        The cache key holds everything the map depends on (size, device, dtype, the identity and
        in-place version of bias and border kernel), so surgery or training can never see a stale
        map. With gradients on (training, gradient ascent), under torch.compile or jit.trace, or for
        inference tensors, the map is computed afresh and not stored. Inside an export the map an
        eager pass cached for this input size is used as a constant (export runs on fake tensors,
        whose keys cannot be checked; `deploy.onnx_export` runs that eager pass on a fresh copy).
        """
        if exporting():
            size = tuple(x.shape[-2:])
            planned = next((m for k, m in self._bias_maps.items() if k[0] == size and not k[3]), None)
            return self._compute_bias_map(x) if planned is None else planned.to(x.dtype)
        if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return self._compute_bias_map(x)
        ids = (_identity(self.border_kernel), None if self.bias is None else _identity(self.bias))
        if ids[0] is None or (self.bias is not None and ids[1] is None):
            return self._compute_bias_map(x)
        key = (tuple(x.shape[-2:]), x.device, x.dtype, torch.is_inference_mode_enabled(), *ids)
        cached = self._bias_maps.get(key)
        if cached is None:
            self._bias_maps.clear()
            cached = self._bias_maps[key] = self._compute_bias_map(x)
        return cached

    def _compute_bias_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.border_correction(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight, self.bias) + self.bias_map(x)

    def _apply(self, fn, *args, **kwargs):  # .to(), .half(), .cuda(): drop maps of the old device/dtype
        self._bias_maps = {}
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):  # deepcopy/pickle: the cache is derived data
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_bias_maps"] = {}
        return state


class BorderMaskConv2d(nn.Module):
    """`BorderCorrectedConv2d` with the correction moved to its input: one conv on two channels.

    Channel 0 is the image zero-padded, channel 1 a mask (1 on the padding, 0 inside); the conv runs
    without padding, its weight the folded kernel on channel 0 and the border kernel on channel 1:
    conv([pad(x), mask], [W, M]) = conv(x, W, padding) + conv(mask, M), the same output. It costs a
    second input channel in the first conv (1/C_in more of that conv's MACs) and lets an engine fuse
    the conv with what follows. The mask is built from the input's size, so any size works.
    """

    def __init__(self, conv: BorderCorrectedConv2d):
        super().__init__()
        border = conv.border_kernel.detach().to(conv.weight.dtype)
        self.weight = nn.Parameter(torch.cat([conv.weight.detach(), border], 1))
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        self.stride, self.dilation, self.pads = conv.stride, conv.dilation, conv_padding(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = F.pad(x.new_zeros(1, 1, *x.shape[-2:]), self.pads, value=1.0).expand(x.shape[0], -1, -1, -1)
        x = torch.cat([F.pad(x, self.pads), mask], 1)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation)


def to_mask_convs(model: nn.Module) -> int:
    """Replace every `BorderCorrectedConv2d` of `model` (in place) by its `BorderMaskConv2d`; how many."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, BorderCorrectedConv2d)]
    for name, conv in found:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, BorderMaskConv2d(conv))
    return len(found)
