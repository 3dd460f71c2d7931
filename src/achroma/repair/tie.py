"""Merged clusters made equal gradually, inside the uncompressed model (Centripetal SGD, Ding et al. 2019).

A merge averages each cluster's producer entries (conv filters, BN affines, shortcut rows) and sums the
consumers' input slices: exact only when the members are already equal. `ClusterTie` makes them so
during training instead of all at once before it: before every step it moves each member's entries
toward their cluster's mean, so that the share of the distance left follows `1 - min(1, f / until)`
over the fraction `f` of the training done. From `until` on the members are equal after every step
(the model computes the merged model's function) and the merge that follows changes nothing:

    >>> tie = ClusterTie(model, merges, example)      # model: the uncompressed model, traced for surgery
    >>> tie.step(0.25)                                # before each step, with the fraction of training done
    >>> merged = tie.merge()                          # at the end: members equal, then merged exactly

The model the tie trains is the uncompressed one made ready for surgery (an option-A shortcut becomes
an explicit channel map, exactly), so that a shortcut's rows are pulled together like any producer's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from ..clustering import Clustering
from ..surgery.graph import prepare_for_surgery
from ..surgery.groups import ChannelGraph
from ..surgery.merge import PRODUCER_TENSORS
from ..surgery.scales import is_batchnorm

PULLED_BN = ("weight", "bias", "running_mean", "running_var")  # a BatchNorm's per-channel entries


@dataclass
class _Tied:
    """One producer tensor's clustered entries: `slots[k]` is an entry of cluster `segment[k]` (axis 0)."""

    tensor: torch.Tensor
    slots: torch.Tensor
    segment: torch.Tensor
    sizes: torch.Tensor

    @torch.no_grad()
    def pull(self, a: float) -> None:
        t = self.tensor
        picked = t.index_select(0, self.slots)
        shape = (-1,) + (1,) * (t.ndim - 1)
        means = torch.zeros((len(self.sizes),) + t.shape[1:], dtype=t.dtype, device=t.device)
        means.index_add_(0, self.segment, picked).div_(self.sizes.to(t.dtype).view(shape))
        t.index_copy_(0, self.slots, picked + a * (means.index_select(0, self.segment) - picked))


def merge_clusterings(merges: dict[str, tuple[list[int], list[int]]]) -> dict[str, Clustering]:
    """Each merged layer's clustering (labels, representatives as the compressor chose them). A pruned
    layer (its removed channels labelled -1: `refit_merges`) is refused: a tie averages, it does not remove."""
    out = {}
    for path, (labels, reps) in merges.items():
        labels = np.asarray(labels, dtype=np.int64)
        if (labels < 0).any():
            raise ValueError(f"layer {path!r} was pruned (its other channels removed, not averaged): the centripetal "
                             "repair ties averaged clusters only; use distill after a pruning selection")
        out[path] = Clustering(labels, list(reps), len(reps), "given", layer=path)
    return out


class ClusterTie:
    """The producers of every merged cluster of `merges` in `model`, pulled together step by step.

    `model` is prepared for surgery in place and is the model to train; `merges` maps a conv that writes
    each merged group to its (labels, representatives), as `RepairJob.merges`; `example` is an input batch.
    """

    def __init__(self, model: nn.Module, merges: dict[str, tuple[list[int], list[int]]], example: torch.Tensor,
                 until: float = 0.5) -> None:
        if not 0 < until <= 1:
            raise ValueError(f"until must be a fraction of the training in (0, 1]; got {until!r}")
        self.model = prepare_for_surgery(model)
        self.example, self.until = example, until
        self.clusterings = merge_clusterings(merges)
        graph = ChannelGraph(self.model, example, own=True)  # tracing only: the graph's merge is never called
        modules = dict(self.model.named_modules())
        self.tied: list[_Tied] = []
        for path, clustering in self.clusterings.items():
            members = [np.flatnonzero(clustering.labels == k).tolist() for k in range(clustering.n_clusters)]
            members = [m for m in members if len(m) > 1]
            for use in graph.uses(path):
                if use.role == "producer":
                    self.tied += _tied_tensors(modules[use.path], use.index, members)
        self._left = 1.0  # the share of the members' distance the schedule leaves now

    def step(self, fraction: float) -> None:
        """Pull every cluster's members toward their mean so that 1 - min(1, fraction / until) of the distance
        is left (of what was left at the last step, scaled: training moves them apart in between)."""
        left = max(0.0, 1.0 - fraction / self.until)
        a = 1.0 if left == 0.0 or self._left == 0.0 else 1.0 - left / self._left
        self._left = left
        if a > 0:
            self.pull(a)

    def pull(self, a: float) -> None:
        """Move every member's entries a share `a` of the way to its cluster's mean (1: all equal)."""
        for t in self.tied:
            t.pull(a)

    def merge(self) -> nn.Module:
        """The members made equal, then every cluster merged (an exact merge): the merged model, a new one."""
        self.pull(1.0)
        current, own = self.model, False
        for path, clustering in self.clusterings.items():
            current = ChannelGraph(current, self.example, own=own).merge(path, clustering)
            own = True
        return current


def _tied_tensors(module: nn.Module, index: dict[int, list[int]], clusters: list[list[int]]) -> list[_Tied]:
    names = PULLED_BN if is_batchnorm(module) else PRODUCER_TENSORS
    out = []
    slots, segment = [], []
    sizes: list[int] = []
    for members in clusters:
        entries = [index[m] for m in members if m in index]
        if len(entries) < 2:
            continue
        for position in range(len(entries[0])):  # a channel may own several entries (a Linear after a flatten)
            for e in entries:
                slots.append(e[position])
                segment.append(len(sizes))
            sizes.append(len(entries))
    if not slots:
        return out
    for name in names:
        tensor = getattr(module, name, None)
        if isinstance(tensor, torch.Tensor) and tensor.ndim >= 1 and tensor.is_floating_point():
            device = tensor.device
            out.append(_Tied(tensor, torch.tensor(slots, device=device), torch.tensor(segment, device=device),
                             torch.tensor(sizes, device=device)))
    return out
