"""`BorderCorrectedConv2d`: the folded first conv that stays exact at the image border.

Zero padding of the *normalized* color input is padding with the per-channel mean in raw pixel
units, one value per channel; a 1-channel gray input cannot be padded with three values at once.
With mean m_c and std s_c, the folded conv on zero-padded raw gray lacks, at each output pixel,
sum over the kernel taps that fall on padding of M[k] = sum_c w_c[k] m_c / s_c. That term depends
only on where the output pixel lies, so it is a fixed tensor: the convolution of a mask (1 on the
padding, 0 inside) with the kernel M, which this layer adds back (`border_kernel` holds M).
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
        self.register_buffer("border_kernel", torch.zeros(self.out_channels, 1, *self.kernel_size))

    def border_correction(self, x: torch.Tensor) -> torch.Tensor:
        """(1, out_channels, H', W'): what the padding taps would have contributed."""
        mask = F.pad(x.new_zeros(1, 1, *x.shape[-2:]), conv_padding(self), value=1.0)
        return F.conv2d(mask, self.border_kernel.to(x.dtype), None, self.stride, 0, self.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.border_correction(x)
