"""Channel interleaving (a channel shuffle) as an explicit permutation.

The seed (k-neural-api, `cai.layers.InterleaveChannels(step_size)`) concatenates the strided slices
`x[..., 0::step], x[..., 1::step], ..., x[..., step-1::step]`: reading the channels as consecutive
chunks of `step`, it takes the first channel of every chunk, then the second of every chunk, and so
on. With `channels = groups * step` that is the usual channel shuffle (view as (groups, step),
transpose, flatten): output `s * groups + j` reads input `j * step + s`. The seed places it after a
grouped pointwise conv with `step` = output channels per group, so that every group of the next
grouped conv reads channels from all groups of the previous one.

Ours writes the same thing as a round robin over *group sizes*: output position k reads the next
unread channel of the next group that still has one. For equal groups of `step` (and for the seed's
trailing short chunk when `channels % step != 0`) this is exactly the seed's order
(`interleave_permutation_from_step`); the size form also covers the uneven groups of our
`GroupedPointwiseConv`. It is a permutation, so it loses no channel and is inverted by
`inverse_permutation`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


def interleave_permutation(sizes: Sequence[int]) -> list[int]:
    """perm[k] = the input channel that output channel k reads: round robin over groups of `sizes`."""
    sizes = [int(s) for s in sizes]
    if any(s < 0 for s in sizes):
        raise ValueError(f"group sizes must be non-negative, got {sizes}")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [start + k for k in range(max(sizes, default=0)) for start, size in zip(starts, sizes) if k < size]


def step_sizes(channels: int, step: int) -> list[int]:
    """The seed's reading of `channels` as consecutive chunks of `step` (the last one may be short)."""
    if step < 2:  # the seed treats a step below 2 as 1: no interleaving
        return [1] * channels
    return [step] * (channels // step) + ([channels % step] if channels % step else [])


def interleave_permutation_from_step(channels: int, step: int) -> list[int]:
    """The seed's InterleaveChannels(step) order: concatenation of range(s, channels, step) for each s."""
    return interleave_permutation(step_sizes(channels, step))


def inverse_permutation(perm: Sequence[int]) -> list[int]:
    """inv such that inv[perm[k]] = k; raises unless `perm` is a permutation of range(len(perm))."""
    perm = [int(p) for p in perm]
    if sorted(perm) != list(range(len(perm))):
        raise ValueError("not a permutation")
    inv = [0] * len(perm)
    for k, p in enumerate(perm):
        inv[p] = k
    return inv


class ChannelInterleave(nn.Module):
    """out[:, k] = x[:, perm[k]] with perm the round robin over `sizes` (see the module docstring).

    The permutation is a non-persistent buffer: it follows `.to(device)` and is rebuilt from the
    constructor arguments, so it adds nothing to a checkpoint.
    """

    def __init__(self, sizes: Sequence[int], device: torch.device | str | None = None):
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        perm = interleave_permutation(self.sizes)
        self.register_buffer("perm", torch.tensor(perm, dtype=torch.long, device=device), persistent=False)

    @classmethod
    def from_step(cls, channels: int, step: int, device: torch.device | str | None = None) -> "ChannelInterleave":
        """The seed's InterleaveChannels(step) on `channels` channels."""
        return cls(step_sizes(channels, step), device=device)

    @property
    def channels(self) -> int:
        return len(self.perm)

    def is_identity(self) -> bool:
        return bool(torch.equal(self.perm.cpu(), torch.arange(self.channels)))

    def inverse(self) -> torch.Tensor:
        """The inverse permutation (a LongTensor on the buffer's device)."""
        inv = torch.empty_like(self.perm)
        inv[self.perm] = torch.arange(self.channels, device=self.perm.device)
        return inv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"ChannelInterleave expects {self.channels} channels, got {x.shape[1]}")
        return x.index_select(1, self.perm)

    def extra_repr(self) -> str:
        if len(set(self.sizes)) == 1:
            return f"channels={self.channels}, groups={len(self.sizes)} of {self.sizes[0]}"
        return f"channels={self.channels}, sizes={list(self.sizes)}"
