"""`PermutedGroupedConv`: a grouped 1x1 conv that reads and writes channels in the dense conv's order.

The channel order that keeps most of a dense weight's energy (see `order.py`) is rarely the order
the rest of the network uses. Instead of moving that permutation into the producers and consumers
(BN, concatenations, residual sums, the next convs), the layer carries it: gather the input
channels in the chosen order (`index_select`), run the grouped conv, scatter the outputs back to
their original positions. The rest of the network is untouched, a plan with one group is exactly
the dense conv, and a checkpoint only needs the plan (groups, permutations) to rebuild the layer.
A gather costs memory traffic, not multiply-accumulates (torch's FlopCounter counts none).

A strided 1x1 conv (a ResNet's downsampling shortcut) is a subsampling followed by a 1x1 conv; the
layer subsamples first (`x[..., ::s, ::s]`), so the same layer replaces it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..layers.grouped import GroupedPointwiseConv
from ..layers.interleave import inverse_permutation


class PermutedGroupedConv(nn.Module):
    """y = scatter(grouped_conv(gather(x[..., ::s, ::s], in_perm)), out_perm).

    `in_perm[p]`: the original input channel that position p of the grouped conv reads;
    `out_perm[q]`: the original output channel that position q of the grouped conv writes.
    Identity permutations are not stored (no gather). The permutations are non-persistent buffers:
    they are part of the plan (the checkpoint's JSON), not of the weights.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 1, *, bias: bool = False, stride: int = 1,
                 in_perm: Sequence[int] | None = None, out_perm: Sequence[int] | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.in_channels, self.out_channels, self.groups, self.stride = in_channels, out_channels, int(groups), int(stride)
        self.conv = GroupedPointwiseConv(in_channels, out_channels, groups, bias=bias, device=device, dtype=dtype)
        in_perm = _checked(in_perm, in_channels, "in_perm")
        out_perm = _checked(out_perm, out_channels, "out_perm")
        self.register_buffer("in_perm", None if in_perm is None else torch.tensor(in_perm, device=device),
                             persistent=False)
        out_inv = None if out_perm is None else inverse_permutation(out_perm)
        self.register_buffer("out_inv", None if out_inv is None else torch.tensor(out_inv, device=device),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.in_perm is not None:
            x = x.index_select(1, self.in_perm)
        y = self.conv(x)
        return y if self.out_inv is None else y.index_select(1, self.out_inv)

    @torch.no_grad()
    def load_dense(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "PermutedGroupedConv":
        """Set the grouped weights to the block diagonal of a dense (out, in[, 1, 1]) weight, permuted."""
        w = weight.reshape(weight.shape[0], weight.shape[1])
        if self.in_perm is not None:
            w = w.index_select(1, self.in_perm.to(w.device))
        out_perm = self.out_permutation()
        if out_perm is not None:
            w = w.index_select(0, out_perm.to(w.device))
            bias = None if bias is None else bias.index_select(0, out_perm.to(bias.device))
        row = col = 0
        for conv in self.conv.convs:
            n = conv.groups
            o, i = conv.out_channels // n, conv.in_channels // n
            blocks = [w[row + k * o: row + (k + 1) * o, col + k * i: col + (k + 1) * i] for k in range(n)]
            conv.weight.copy_(torch.cat(blocks, 0).reshape(conv.weight.shape))
            if conv.bias is not None and bias is not None:
                conv.bias.copy_(bias[row: row + conv.out_channels])
            row, col = row + conv.out_channels, col + conv.in_channels
        return self

    def out_permutation(self) -> torch.Tensor | None:
        """out_perm (position q of the grouped conv -> original output channel), or None for the identity."""
        if self.out_inv is None:
            return None
        perm = torch.empty_like(self.out_inv)
        perm[self.out_inv] = torch.arange(len(self.out_inv), device=self.out_inv.device)
        return perm

    def dense_weight(self) -> torch.Tensor:
        """The equivalent dense (out, in) weight in the original channel order (zero across groups)."""
        w = self.conv.dense_weight()
        if self.out_inv is not None:
            w = w.index_select(0, self.out_inv)
        if self.in_perm is not None:
            w = w.new_zeros(w.shape).index_copy(1, self.in_perm, w)
        return w

    def extra_repr(self) -> str:
        perm = ", permuted" if self.in_perm is not None or self.out_inv is not None else ""
        return (f"{self.in_channels}, {self.out_channels}, groups={self.groups}"
                + (f", stride={self.stride}" if self.stride > 1 else "") + perm)


def _checked(perm: Sequence[int] | None, n: int, name: str) -> list[int] | None:
    if perm is None:
        return None
    perm = [int(p) for p in perm]
    if len(perm) != n or sorted(perm) != list(range(n)):
        raise ValueError(f"{name} must be a permutation of range({n})")
    return None if perm == list(range(n)) else perm
