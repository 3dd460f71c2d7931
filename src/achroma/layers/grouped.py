"""Grouped pointwise convolutions with interleaving (the kDenseNet / kEffNet seed), in PyTorch.

Seed: Schwarz Schuler et al., "Grouped Pointwise Convolutions Reduce Parameters in Convolutional
Neural Networks" (MENDEL 2022) and its Keras code, k-neural-api `cai/layers.py`. The kTypes
`D6_12ch()`, `D6_16ch()`, `D6_24ch()`, `D6_32ch()`, ... all select `kConv2DType2` with
`min_channels_per_group` = 12, 16, 24, 32, ...; this module rebuilds that layer (our own code,
written from a reading of the seed, not a translation of it):

* Group count (`seed_group_count`, what the seed does): the largest common divisor of the input and
  output channel counts that is at most `in_channels // min_channels_per_group`. So every group
  reads at least `min_channels_per_group` channels, and the count always divides both sides. When
  no divisor above 1 qualifies (fewer than 2 * min inputs, or the only common divisor is 1, e.g. a
  prime channel count) the seed falls back to an ordinary dense 1x1 conv; so do we.
* Layer (`GroupedPointwiseBlock`, what the seed does): a grouped 1x1 conv with that group count,
  [BN], activation; then, when the output has more than one channel per group, the interleaving
  (`ChannelInterleave`, step = output channels per group); then, only when the layer does not
  expand (in_channels >= out_channels), a *second* grouped 1x1 conv, out -> out with the same group
  count, [BN], activation, whose result is added to the first conv's (not interleaved) output. This
  second conv is what mixes the groups: after the interleaving each of its groups reads channels
  from every group of the first. An expanding layer (in < out) has no second conv; its output is
  the interleaved first conv.

Where ours differs, by choice and documented:

* `rule="uneven"` (not the seed's `kConv2DType2`): group count `in_channels // min_channels_per_group`
  (at most `out_channels`) whether or not it divides the channel counts; groups are then
  consecutive channel ranges whose sizes differ by at most one (larger groups first), on both the
  input and the output side. The seed's D6 rule cannot do this: for a prime or odd channel count
  (as merging leaves them, e.g. 37) it finds no common divisor and falls back to a dense conv, and
  its later "without divisibility constraints" layer (`kGroupConv2D`, D6v3) pads the input with
  copies of its first channels and adds a second path of one-filter groups for the remainder. We
  copy nothing: an uneven grouped conv is at most three ordinary grouped `nn.Conv2d`, one per run
  of equal-sized groups (`GroupedPointwiseConv`).
* BN inside the layer is optional (`norm_layer`); the seed's DenseNet use passes
  `has_batch_norm=False`, as our models do. Keras BN momentum/epsilon are not copied.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from .interleave import ChannelInterleave

ActLayer = Callable[[], nn.Module]
NormLayer = Callable[..., nn.Module]

RULES = ("seed", "uneven")


# ---- group counts -------------------------------------------------------------------------------

def seed_group_count(in_channels: int, out_channels: int, min_channels_per_group: int) -> int:
    """The seed's D6 rule: the largest common divisor of both counts <= in_channels // min (or 1)."""
    cap = min(in_channels, out_channels, in_channels // max(1, int(min_channels_per_group)))
    for groups in range(max(1, cap), 0, -1):
        if in_channels % groups == 0 and out_channels % groups == 0:
            return groups
    return 1


def uneven_group_count(in_channels: int, out_channels: int, min_channels_per_group: int) -> int:
    """Ours: in_channels // min groups (at least 1, at most out_channels), divisible or not."""
    return max(1, min(in_channels // max(1, int(min_channels_per_group)), out_channels))


def group_count(in_channels: int, out_channels: int, min_channels_per_group: int, rule: str = "seed") -> int:
    """The number of groups of a grouped pointwise layer; `rule` is "seed" (D6) or "uneven" (ours)."""
    if rule == "seed":
        return seed_group_count(in_channels, out_channels, min_channels_per_group)
    if rule == "uneven":
        return uneven_group_count(in_channels, out_channels, min_channels_per_group)
    raise ValueError(f"unknown group rule {rule!r}; known: {', '.join(RULES)}")


def split_sizes(channels: int, groups: int) -> list[int]:
    """Consecutive group sizes of `channels` split into `groups`: differ by at most 1, larger first."""
    if not 1 <= groups <= channels:
        raise ValueError(f"cannot split {channels} channels into {groups} non-empty groups")
    q, r = divmod(channels, groups)
    return [q + 1] * r + [q] * (groups - r)


# ---- closed-form parameter counts --------------------------------------------------------------

def grouped_conv_params(in_channels: int, out_channels: int, groups: int, bias: bool = False) -> int:
    """Weights (+ bias) of a grouped 1x1 conv whose groups need not divide the channel counts.

    With in = g*q + r and out = g*p + s (groups larger first on both sides), the sum over groups of
    in_i * out_i is g*q*p + q*s + p*r + min(r, s); for equal groups it is in * out / g.
    """
    g = int(groups)
    q, r = divmod(in_channels, g)
    p, s = divmod(out_channels, g)
    return g * q * p + q * s + p * r + min(r, s) + (out_channels if bias else 0)


def mixes(in_channels: int, out_channels: int, groups: int, mix: bool | None = None) -> bool:
    """Whether the block has the second (group-mixing) conv: the seed's rule unless `mix` is given."""
    if groups <= 1:
        return False
    return in_channels >= out_channels if mix is None else bool(mix)


def grouped_pointwise_block_params(in_channels: int, out_channels: int, groups: int, *, mix: bool | None = None,
                                   bias: bool = False, norm: bool = False) -> int:
    """Trainable parameters of a `GroupedPointwiseBlock` (norm = an affine BN after each conv)."""
    total = grouped_conv_params(in_channels, out_channels, groups, bias) + (2 * out_channels if norm else 0)
    if mixes(in_channels, out_channels, groups, mix):
        total += grouped_conv_params(out_channels, out_channels, groups, bias) + (2 * out_channels if norm else 0)
    return total


def pointwise_params(in_channels: int, out_channels: int, min_channels_per_group: int, *, rule: str = "seed",
                     mix: bool | None = None, bias: bool = False, norm: bool = False) -> int:
    """Trainable parameters of `GroupedPointwiseBlock(in, out, min_channels_per_group, rule=...)`."""
    groups = group_count(in_channels, out_channels, min_channels_per_group, rule)
    return grouped_pointwise_block_params(in_channels, out_channels, groups, mix=mix, bias=bias, norm=norm)


# ---- activations (names, so that a model's arguments stay JSON for its checkpoint) -------------

_ACTS: dict[str, ActLayer] = {
    "relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU, "hardswish": nn.Hardswish, "hard_swish": nn.Hardswish,
    "gelu": nn.GELU, "identity": nn.Identity, "none": nn.Identity, "linear": nn.Identity,
}


def get_act_layer(name: str | ActLayer | None) -> ActLayer:
    """An activation constructor by name ("relu", "silu" = the seed's swish, "hardswish", "gelu", None)."""
    if name is None:
        return nn.Identity
    if callable(name):
        return name
    try:
        return _ACTS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(_ACTS))}") from None


# ---- layers --------------------------------------------------------------------------------------

def _given_splits(splits: Sequence[int] | None, channels: int, groups: int, name: str) -> list[int]:
    if splits is None:
        return split_sizes(channels, groups)
    splits = [int(v) for v in splits]
    if len(splits) != groups or sum(splits) != channels or min(splits) < 1:
        raise ValueError(f"{name} must be {groups} positive sizes adding up to {channels}, got {splits}")
    return splits


class GroupedPointwiseConv(nn.Module):
    """A 1x1 conv split into `groups` parallel groups of consecutive channels; any group count.

    Group i maps input channels `in_splits[i]` to output channels `out_splits[i]` (by default sizes
    differing by at most one, larger first; explicit `in_splits`/`out_splits` give any positive
    sizes, as merging channels through the layer leaves them). Groups of equal shape run as one grouped `nn.Conv2d`, so a count that
    divides both sides is a single `nn.Conv2d(groups=g)` (`convs.0`), and any other count is at most
    three of them on consecutive channel slices. `groups=1` is an ordinary dense 1x1 conv.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 1, bias: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None, *,
                 in_splits: Sequence[int] | None = None, out_splits: Sequence[int] | None = None):
        super().__init__()
        groups = int(groups)
        if not 1 <= groups <= min(in_channels, out_channels):
            raise ValueError(f"groups must be in 1..{min(in_channels, out_channels)} for {in_channels} -> "
                             f"{out_channels} channels, got {groups}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.in_splits = _given_splits(in_splits, in_channels, groups, "in_splits")
        self.out_splits = _given_splits(out_splits, out_channels, groups, "out_splits")
        runs: list[list[int]] = []  # [group count, in per group, out per group] of each run of equal groups
        for i_size, o_size in zip(self.in_splits, self.out_splits):
            if runs and runs[-1][1:] == [i_size, o_size]:
                runs[-1][0] += 1
            else:
                runs.append([1, i_size, o_size])
        self.run_in = [n * i for n, i, _ in runs]
        self.run_out = [n * o for n, _, o in runs]
        self.convs = nn.ModuleList(
            nn.Conv2d(n * i, n * o, 1, groups=n, bias=bias, device=device, dtype=dtype) for n, i, o in runs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.convs) == 1:
            return self.convs[0](x)
        parts = x.split(self.run_in, dim=1)
        return torch.cat([conv(part) for conv, part in zip(self.convs, parts)], dim=1)

    def dense_weight(self) -> torch.Tensor:
        """The equivalent dense (out, in) weight: block diagonal, zero across groups."""
        like = self.convs[0].weight
        dense = like.new_zeros(self.out_channels, self.in_channels)
        row = col = 0
        for conv in self.convs:
            n = conv.groups
            o, i = conv.out_channels // n, conv.in_channels // n
            w = conv.weight.detach().reshape(conv.out_channels, i)
            for k in range(n):
                dense[row + k * o: row + (k + 1) * o, col + k * i: col + (k + 1) * i] = w[k * o: (k + 1) * o]
            row, col = row + conv.out_channels, col + conv.in_channels
        return dense

    def dense_bias(self) -> torch.Tensor | None:
        if self.convs[0].bias is None:
            return None
        return torch.cat([conv.bias.detach() for conv in self.convs])

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, groups={self.groups}"


class GroupedPointwiseBlock(nn.Module):
    """The seed's grouped pointwise replacement for a dense 1x1 conv (`kConv2DType2`, the D6 kTypes).

    conv1 (grouped, `groups`) -> norm1 -> act1 -> interleave -> [conv2 (grouped, out -> out) -> norm2
    -> act2, plus the act1 output]. `groups` defaults to `group_count(in, out, min_channels_per_group,
    rule)`; with one group the block is a dense conv -> norm -> act, as in the seed. `mix=None` keeps
    the seed's rule for the second conv (only when in_channels >= out_channels); True/False force it.
    `interleave=False` drops the interleaving (an ablation; the seed always interleaves).
    """

    def __init__(self, in_channels: int, out_channels: int, min_channels_per_group: int = 16, *,
                 groups: int | None = None, rule: str = "seed", mix: bool | None = None, interleave: bool = True,
                 act_layer: str | ActLayer | None = None, norm_layer: NormLayer | None = None, bias: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        if groups is None:
            groups = group_count(in_channels, out_channels, min_channels_per_group, rule)
        kw = dict(device=device, dtype=dtype)
        act = get_act_layer(act_layer)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, int(groups)
        self.conv1 = GroupedPointwiseConv(in_channels, out_channels, groups, bias=bias, **kw)
        self.norm1 = norm_layer(out_channels, **kw) if norm_layer else nn.Identity()
        self.act1 = act()
        sizes = self.conv1.out_splits
        self.interleave = (ChannelInterleave(sizes, device=device)
                           if interleave and self.groups > 1 and max(sizes) > 1 else None)
        self.conv2: GroupedPointwiseConv | None = None
        if mixes(in_channels, out_channels, self.groups, mix):
            self.conv2 = GroupedPointwiseConv(out_channels, out_channels, groups, bias=bias, **kw)
            self.norm2 = norm_layer(out_channels, **kw) if norm_layer else nn.Identity()
            self.act2 = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.norm1(self.conv1(x)))
        z = y if self.interleave is None else self.interleave(y)
        if self.conv2 is None:
            return z
        return self.act2(self.norm2(self.conv2(z))) + y

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, groups={self.groups}, mix={self.conv2 is not None}"


def grouped_pointwise_factory(min_channels_per_group: int = 16, *, rule: str = "seed", mix: bool | None = None,
                              interleave: bool = True, act_layer: str | ActLayer | None = None,
                              norm_layer: NormLayer | None = None, bias: bool = False
                              ) -> Callable[..., GroupedPointwiseBlock]:
    """`factory(in_channels, out_channels, device=None, dtype=None)` building `GroupedPointwiseBlock`s."""

    def factory(in_channels: int, out_channels: int, device=None, dtype=None) -> GroupedPointwiseBlock:
        return GroupedPointwiseBlock(in_channels, out_channels, min_channels_per_group, rule=rule, mix=mix,
                                     interleave=interleave, act_layer=act_layer, norm_layer=norm_layer, bias=bias,
                                     device=device, dtype=dtype)

    return factory


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters of `module` (what the closed forms above count)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def block_plans(model: nn.Module) -> list[tuple[str, int, int, int, bool]]:
    """(path, in, out, groups, mixes) of every GroupedPointwiseBlock in `model`, in module order."""
    return [(name, m.in_channels, m.out_channels, m.groups, m.conv2 is not None)
            for name, m in model.named_modules() if isinstance(m, GroupedPointwiseBlock)]


__all__: Sequence[str] = [
    "GroupedPointwiseConv", "GroupedPointwiseBlock", "grouped_pointwise_factory", "seed_group_count",
    "uneven_group_count", "group_count", "split_sizes", "grouped_conv_params", "grouped_pointwise_block_params",
    "pointwise_params", "mixes", "get_act_layer", "count_parameters", "block_plans", "RULES",
]
