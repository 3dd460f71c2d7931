"""The channel groups of a whole network: the units that merging, budgets and baselines work on.

A channel group is a set of channel *positions* that must shrink together: every conv, BN and
shortcut that writes them and every layer that reads them. A block's inner conv is a group of its
own; a residual stream (a ResNet stage: the stem or first block's conv, each block's second conv,
the shortcut) is one group however many convs write it; a DenseNet layer's growth channels are a
group read by every later layer of its block. A stream that grows by concatenation (ShuffleNet
v1: the stem's 24 channels become 24 of the 120 channels of stage 2) is followed position by
position: the stem's group holds its 24 positions in every later tensor, and a conv that writes
the whole wider stream (a later unit adding into it) is a writer of several groups, each at its
own rows (`ChannelGroup.rows`). Groups are named by their root: the first conv of the forward pass
that writes them.

`ChannelGraph` is the one definition: one trace of one model state gives the groups, each group's
uses and constraints, the check that a list of layers names disjoint groups, and the merge itself.
The budget planner, the selections and the merge all read it, so they cannot disagree.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..grouping.module import PermutedGroupedConv
from ..models.inspect import conv_forward_order

if TYPE_CHECKING:
    from ..clustering import Clustering
from .merge import merge_traced
from .graph import (ChannelConstraints, ChannelUse, build_graph, channel_uses, constraints_of, prepare_for_surgery,
                    resolve_conv)


@dataclass
class ChannelGroup:
    """One group: its root conv, the convs that write it (each at its rows), its width, every use.

    rows[w][c]: the output channel of writer `w` that carries the group's channel c (the identity for
    the root; positions inside a wider stream for a conv that adds into a concatenated stream).
    step: removals from this group come in multiples of `step` (a grouped conv or a chunk whose
    blocks must lose equally); max_removed: the most channels it can lose (0: it cannot shrink).
    """

    root: str
    writers: list[str]
    channels: int
    uses: list[ChannelUse] = field(default_factory=list)
    refused: str | None = None  # why it cannot be merged (then uses is empty)
    rows: dict[str, list[int]] = field(default_factory=dict)
    step: int = 1
    max_removed: int | None = None

    @property
    def kind(self) -> str:
        return "stream" if len(self.writers) > 1 else "inner"

    def width_after(self, removed: int) -> int:
        """The width once `removed` channels are asked to go, lowered to what the constraints allow."""
        top = self.channels - 1 if self.max_removed is None else self.max_removed
        removed = max(0, min(removed, top))
        return self.channels - removed // self.step * self.step

    def summary(self) -> dict[str, Any]:
        return {"root": self.root, "writers": self.writers, "channels": self.channels, "kind": self.kind,
                "refused": self.refused, "step": self.step, "max_removed": self.max_removed}


def _removal_limits(constraints: ChannelConstraints) -> tuple[int, int | None]:
    """(step, max_removed) that a group's constraints allow for removals of any count.

    A balanced partition (grouped conv, chunk) loses the same number in each of its blocks: removals
    come in multiples of its block count, at most (smallest block - 1) each; a block that no root
    channel reaches can lose none, so the group cannot shrink at all; a fixed split none either.
    """
    step, most = 1, None
    for part in constraints.partitions:
        if not part.balanced:
            continue
        sizes = [0] * part.n_blocks
        for b in part.block.values():
            sizes[b] += 1
        if part.fixed or min(sizes) == 0:
            return 1, 0
        step = step * part.n_blocks // _gcd(step, part.n_blocks)
        cap = (min(sizes) - 1) * part.n_blocks
        most = cap if most is None else min(most, cap)
    if most is not None:
        most = most // step * step
    return step, most


def _depthwise(m: nn.Module) -> bool:
    """A depthwise conv writes its input's channels again: it belongs to its input's group."""
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


class ChannelGraph:
    """One traced state of a model: its channel groups, their uses and constraints, and the merge.

    Built once per model state (one Torch-Pruning trace of a prepared copy; the model is not
    modified). `merge` consumes the graph: it edits the copy in place and returns it.
    own=True: the graph takes `model` itself, no copy (a model the caller will not use again).
    order: the convs' forward order when the caller knows it (a merge keeps every conv and their
    order: the order of the model before it holds), saving a forward pass.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, own: bool = False,
                 order: list[str] | None = None) -> None:
        self.model = model
        self.example = example_input
        self.work = prepare_for_surgery(model if own else copy.deepcopy(model))
        self.dg = build_graph(self.work, example_input)
        self._uses: dict[str, list[ChannelUse]] = {}
        self._constraints: dict[str, ChannelConstraints] = {}
        self._groups: list[ChannelGroup] | None = None
        self._order: list[str] | None = None if order is None else list(order)
        self._spent = False

    def conv(self, path: str) -> nn.Conv2d:
        resolve_conv(self.model, path)
        conv = resolve_conv(self.work, path)
        if conv not in self.dg.module2node:
            raise ValueError(f"layer {path!r} is not reached by a forward pass of the example input")
        return conv

    def uses(self, path: str) -> list[ChannelUse]:
        """Every module's use of `path`'s output channels (ValueError when they cannot be merged)."""
        if path not in self._uses:
            self._uses[path] = channel_uses(self.dg, self.work, self.conv(path))
        return self._uses[path]

    def constraints(self, path: str) -> ChannelConstraints:
        if path not in self._constraints:
            self._constraints[path] = constraints_of(self.dg, self.work, self.conv(path), path, self.uses(path))
        return self._constraints[path]

    def group(self, path: str) -> ChannelGroup:
        """The group of `path`'s output channels, with `path` as its root (one walk of the graph)."""
        if self._groups is not None:
            for g in self._groups:
                if g.root == path:
                    return g
        return self._make_group(path)

    @property
    def order(self) -> list[str]:
        """The convs in forward order (one hooked forward pass, cached)."""
        if self._order is None:
            self._order = conv_forward_order(self.work, int(self.example.shape[-1]))
        return self._order

    def groups(self) -> list[ChannelGroup]:
        """Every channel group in forward order; a group the surgery cannot merge has `refused` set."""
        if self._groups is None:
            self._groups = self._find_groups()
        return self._groups

    def _find_groups(self) -> list[ChannelGroup]:
        groups: list[ChannelGroup] = []
        covered: set[tuple[str, int]] = set()  # (writer conv, output channel) already in a group
        skip: set[str] = set()  # convs inside a grouped pointwise conv
        for path in self.order:
            conv = self.work.get_submodule(path)
            if path in skip or _depthwise(conv):
                continue
            mine = {(path, c) for c in range(conv.out_channels)}
            if mine <= covered:
                continue
            if mine & covered:
                done = sorted(c for _, c in mine & covered)
                groups.append(ChannelGroup(path, [path], conv.out_channels, refused=(
                    f"layer {path!r}: {len(done)} of its {conv.out_channels} output channels belong to an earlier "
                    "channel group and the others do not; merging it would merge part of another group")))
                covered |= mine
                continue
            group = self._make_group(path)
            covered |= mine
            for w, rows in group.rows.items():
                covered |= {(w, r) for r in rows}
            for u in group.uses:
                module = self.work.get_submodule(u.path) if u.path else None
                if u.role == "producer" and isinstance(module, PermutedGroupedConv):
                    skip.update(f"{u.path}.{n}" for n, m in module.named_modules() if isinstance(m, nn.Conv2d))
            groups.append(group)
        return groups

    def _make_group(self, path: str) -> ChannelGroup:
        conv = self.work.get_submodule(path)
        try:
            uses = self.uses(path)
        except ValueError as err:
            return ChannelGroup(path, [path], conv.out_channels, refused=str(err))
        order = self.order
        rows: dict[str, list[int]] = {}
        for u in uses:
            m = self.work.get_submodule(u.path)
            if u.role == "producer" and isinstance(m, nn.Conv2d) and not _depthwise(m) and \
                    all(c in u.index for c in range(conv.out_channels)):
                rows[u.path] = [u.index[c][0] for c in range(conv.out_channels)]
        rows = {p: rows[p] for p in order if p in rows} or {path: list(range(conv.out_channels))}
        if not any(u.role == "consumer" for u in uses):  # nothing reads them: the model's outputs (classes)
            return ChannelGroup(path, list(rows), conv.out_channels, refused="its channels are the model's outputs",
                                rows=rows)
        step, most = _removal_limits(self.constraints(path))
        return ChannelGroup(path, list(rows), conv.out_channels, uses, rows=rows, step=step, max_removed=most)

    def check_disjoint(self, paths: Sequence[str]) -> None:
        """ValueError naming two of `paths` whose groups share a channel (merging one merges the other)."""
        owner: dict[tuple[str, int], str] = {}
        for path in paths:
            self.conv(path)
            for u in self.uses(path):
                m = self.work.get_submodule(u.path)
                if u.role != "producer" or not isinstance(m, nn.Conv2d):
                    continue
                for slots in u.index.values():
                    for s in slots:
                        other = owner.setdefault((u.path, s), path)
                        if other != path:
                            raise ValueError(
                                f"layers {other} and {path} write the same channels (channel {s} of {u.path}, one "
                                "channel group): merging one merges the other; name only one of them")

    def merge(self, path: str, clustering: Any, *, fold: bool = True) -> nn.Module:
        """The merged model (the graph's copy, edited): see `merge.merge_channels`. Spends the graph."""
        if self._spent:
            raise RuntimeError("this ChannelGraph has already merged once; trace the merged model again")
        self._spent = True
        return merge_traced(self, path, clustering, fold=fold)


def merge_channels(
    model: nn.Module,
    layer_path: str,
    clustering: Clustering | Sequence[int] | np.ndarray,
    example_input: Any,
    *,
    fold: bool = True,
) -> nn.Module:
    """A new model in which each cluster of `layer_path`'s output channels is one channel.

    `clustering` labels the conv's output channels (a Clustering, or labels with -1 for outliers);
    `example_input` is a batch the model accepts (small is fine) for tracing. The input model is
    not modified. fold=False skips the fold: the representatives are kept as they are and the
    other members are only removed (plain pruning, see `prune.prune_channels`). Raises ValueError
    for an unknown layer path, a label count that differs from the channel count, a single
    cluster, or layers in the group that cannot be merged.
    """
    resolve_conv(model, layer_path)
    return ChannelGraph(model, example_input).merge(layer_path, clustering, fold=fold)


def grouped_inner(model: nn.Module, path: str) -> bool:
    """True for a conv inside a PermutedGroupedConv (its channels are the grouped conv's)."""
    parts = path.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:k])), PermutedGroupedConv) for k in range(1, len(parts)))


def channel_groups(model: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    """Every channel group of `model` in forward order (one trace; the model is not modified)."""
    return ChannelGraph(model, example_input).groups()


def _blocking_pointwise(graph: ChannelGraph) -> list[str]:
    """Grouped 1x1 convs whose equal groups leave a channel group unable to shrink at all."""
    found: list[str] = []
    for g in graph.groups():
        if g.refused is not None or g.max_removed != 0:
            continue
        for part in graph.constraints(g.root).partitions:
            m = graph.work.get_submodule(part.path) if part.path in dict(graph.work.named_modules()) else None
            if (isinstance(m, nn.Conv2d) and part.balanced and m.groups > 1 and not _depthwise(m)
                    and m.kernel_size == (1, 1) and m.padding in ((0, 0), 0) and m.dilation == (1, 1)
                    and part.path not in found):
                found.append(part.path)
    return found


def unequal_groups(model: nn.Module, example_input: torch.Tensor,
                   graph: ChannelGraph | None = None) -> tuple[nn.Module, list[str]]:
    """(model, converted paths): grouped 1x1 convs that block a channel group become `PermutedGroupedConv`s.

    A standard grouped conv needs equal groups, so a channel group that reaches only some of its
    groups (ShuffleNet v1: the stem's 24 channels are the first 24 of a 3-group 1x1 conv's 240
    inputs) could never lose a channel. The same conv as a `PermutedGroupedConv` (identity
    permutations, the same weights: exact) takes any group sizes. Only blocking convs are
    converted, so a model that needs none comes back as it was (the same object). `graph`: the
    model's ChannelGraph when already traced.
    """
    from ..grouping.plan import LayerPlan
    from ..grouping.transform import apply_grouping

    converted: list[str] = []
    while True:
        graph = graph if graph is not None else ChannelGraph(model, example_input)
        paths = [p for p in _blocking_pointwise(graph) if p not in converted]
        graph = None
        if not paths:
            return model, converted
        plans = []
        for path in paths:
            m = model.get_submodule(path)
            plans.append(LayerPlan(path, m.in_channels, m.out_channels, m.groups, list(range(m.in_channels)),
                                   list(range(m.out_channels)), order="native", stride=m.stride[0],
                                   bias=m.bias is not None))
        model = apply_grouping(model, plans, dense_weights={p: _dense(model.get_submodule(p)) for p in paths})
        converted += paths


def _dense(conv: nn.Conv2d) -> torch.Tensor:
    """The (out, in) dense weight of a grouped 1x1 conv: its groups on the block diagonal."""
    w = conv.weight.detach()[:, :, 0, 0]
    o, i = conv.out_channels // conv.groups, conv.in_channels // conv.groups
    dense = w.new_zeros(conv.out_channels, conv.in_channels)
    for g in range(conv.groups):
        dense[g * o:(g + 1) * o, g * i:(g + 1) * i] = w[g * o:(g + 1) * o]
    return dense
