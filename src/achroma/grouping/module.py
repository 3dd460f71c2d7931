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

import bisect
import contextlib
import contextvars
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.grouped import GroupedPointwiseConv
from ..layers.interleave import inverse_permutation

_DENSE = contextvars.ContextVar("achroma_dense_grouped", default=False)


@contextlib.contextmanager
def dense_grouped() -> Iterator[None]:
    """Within this block every PermutedGroupedConv runs as one dense conv in the original channel order.

    For the surgery's graph tracer (Torch-Pruning): it cannot map channels through the gather and
    the grouped conv's slices, but a single conv it maps like any other, and its custom pruner
    (`surgery.layers.PermutedGroupedPruner`) removes channels in that original order.
    """
    token = _DENSE.set(True)
    try:
        yield
    finally:
        _DENSE.reset(token)


class PermutedGroupedConv(nn.Module):
    """y = scatter(grouped_conv(gather(x[..., ::s, ::s], in_perm)), out_perm).

    `in_perm[p]`: the original input channel that position p of the grouped conv reads;
    `out_perm[q]`: the original output channel that position q of the grouped conv writes.
    `in_splits`/`out_splits`: the groups' sizes, when not the default split (merging channels
    through the layer removes them from some groups only, see `remove_channels`).
    Identity permutations are not stored (no gather). The permutations are non-persistent buffers:
    they are part of the plan (the checkpoint's JSON), not of the weights.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 1, *, bias: bool = False, stride: int = 1,
                 in_perm: Sequence[int] | None = None, out_perm: Sequence[int] | None = None,
                 in_splits: Sequence[int] | None = None, out_splits: Sequence[int] | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.in_channels, self.out_channels, self.groups, self.stride = in_channels, out_channels, int(groups), int(stride)
        self.conv = GroupedPointwiseConv(in_channels, out_channels, groups, bias=bias, device=device, dtype=dtype,
                                         in_splits=in_splits, out_splits=out_splits)
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
        if _DENSE.get():  # tracing for the surgery: one op, original channel order (values unchanged)
            bias = self.conv.dense_bias()
            if bias is not None and self.out_inv is not None:
                bias = bias.index_select(0, self.out_inv)
            return F.conv2d(x, self.dense_weight().to(x.dtype)[:, :, None, None],
                            None if bias is None else bias.to(x.dtype))
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

    # ---- channel surgery (merging / pruning through the dependency graph, see surgery/layers.py) ----

    def input_permutation(self) -> list[int]:
        """in_perm as a list (identity included)."""
        return list(range(self.in_channels)) if self.in_perm is None else [int(v) for v in self.in_perm]

    def output_permutation(self) -> list[int]:
        """out_perm as a list (identity included)."""
        perm = self.out_permutation()
        return list(range(self.out_channels)) if perm is None else [int(v) for v in perm]

    def input_slot(self, channel: int) -> tuple[int, int]:
        """(group, column within the group) of original input channel `channel`."""
        pos = channel if self.in_perm is None else int((self.in_perm == channel).nonzero()[0, 0])
        return _slot(pos, self.conv.in_splits)

    def output_slot(self, channel: int) -> tuple[int, int]:
        """(group, row within the group) of original output channel `channel`."""
        pos = channel if self.out_inv is None else int(self.out_inv[channel])
        return _slot(pos, self.conv.out_splits)

    def group_channels(self) -> list[tuple[list[int], list[int]]]:
        """Per group, in order: (original input channels it reads, original output channels it writes)."""
        ins, outs = self.input_permutation(), self.output_permutation()
        groups, i0, o0 = [], 0, 0
        for i_size, o_size in zip(self.conv.in_splits, self.conv.out_splits):
            groups.append((ins[i0:i0 + i_size], outs[o0:o0 + o_size]))
            i0, o0 = i0 + i_size, o0 + o_size
        return groups

    def group_blocks(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per group, in order: (weight (out_g, in_g), bias (out_g,) or None), views into the parameters."""
        return _blocks_of(self.conv)

    @torch.no_grad()
    def remove_channels(self, channels: Sequence[int], side: str) -> "PermutedGroupedConv":
        """Remove original input (`side`="in") or output ("out") channels, in place.

        Each channel leaves the group that reads (writes) it, so groups may end up of any sizes
        (`in_splits`/`out_splits`); a group left empty is a ValueError. The permutations are
        renumbered over the remaining channels.
        """
        if side not in ("in", "out"):
            raise ValueError(f"side must be 'in' or 'out', got {side!r}")
        n = self.in_channels if side == "in" else self.out_channels
        drop = sorted({int(c) for c in channels})
        if not drop:
            return self
        if drop[0] < 0 or drop[-1] >= n:
            raise ValueError(f"channels to remove must be in range({n}), got {drop}")
        slot = self.input_slot if side == "in" else self.output_slot
        gone: list[set[int]] = [set() for _ in range(self.groups)]
        for c in drop:
            g, local = slot(c)
            gone[g].add(local)
        blocks = self.group_blocks()
        in_splits, out_splits = list(self.conv.in_splits), list(self.conv.out_splits)
        sizes = in_splits if side == "in" else out_splits
        for g, s in enumerate(gone):
            sizes[g] -= len(s)
        if min(sizes) < 1:
            raise ValueError(f"grouped pointwise conv ({self.in_channels} -> {self.out_channels}, groups={self.groups}): "
                             f"removing {side}put channels {drop} empties a group (sizes left {sizes})")
        if side == "in":
            new_blocks = [(w[:, [i for i in range(w.shape[1]) if i not in s]], b) for (w, b), s in zip(blocks, gone)]
        else:
            new_blocks = []
            for (w, b), s in zip(blocks, gone):
                keep = [i for i in range(w.shape[0]) if i not in s]
                new_blocks.append((w[keep], None if b is None else b[keep]))
        new_in, new_out = sum(in_splits), sum(out_splits)
        like = self.conv.convs[0].weight
        conv = GroupedPointwiseConv(new_in, new_out, self.groups, bias=self.conv.convs[0].bias is not None,
                                    device=like.device, dtype=like.dtype, in_splits=in_splits, out_splits=out_splits)
        for (dst_w, dst_b), (w, b) in zip(_blocks_of(conv), new_blocks):
            dst_w.copy_(w)
            if dst_b is not None and b is not None:
                dst_b.copy_(b)
        conv.train(self.conv.training)
        for p_new, p_old in zip(conv.parameters(), self.conv.parameters()):
            p_new.requires_grad_(p_old.requires_grad)
        self.conv = conv
        dropped = set(drop)
        renumber = {c: c - bisect.bisect_left(drop, c) for c in range(n) if c not in dropped}
        if side == "in":
            perm = [renumber[c] for c in self.input_permutation() if c not in dropped]
            self.in_channels = new_in
            self.in_perm = None if perm == list(range(new_in)) else torch.tensor(perm, device=like.device)
        else:
            perm = [renumber[c] for c in self.output_permutation() if c not in dropped]
            self.out_channels = new_out
            self.out_inv = (None if perm == list(range(new_out))
                            else torch.tensor(inverse_permutation(perm), device=like.device))
        return self

    def extra_repr(self) -> str:
        perm = ", permuted" if self.in_perm is not None or self.out_inv is not None else ""
        return (f"{self.in_channels}, {self.out_channels}, groups={self.groups}"
                + (f", stride={self.stride}" if self.stride > 1 else "") + perm)


def _slot(pos: int, splits: Sequence[int]) -> tuple[int, int]:
    start = 0
    for g, size in enumerate(splits):
        if pos < start + size:
            return g, pos - start
        start += size
    raise IndexError(f"position {pos} is outside {sum(splits)} channels")


def _blocks_of(conv: GroupedPointwiseConv) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    blocks = []
    for c in conv.convs:
        o = c.out_channels // c.groups
        for k in range(c.groups):
            blocks.append((c.weight[k * o:(k + 1) * o, :, 0, 0], None if c.bias is None else c.bias[k * o:(k + 1) * o]))
    return blocks


def _checked(perm: Sequence[int] | None, n: int, name: str) -> list[int] | None:
    if perm is None:
        return None
    perm = [int(p) for p in perm]
    if len(perm) != n or sorted(perm) != list(range(n)):
        raise ValueError(f"{name} must be a permutation of range({n})")
    return None if perm == list(range(n)) else perm
