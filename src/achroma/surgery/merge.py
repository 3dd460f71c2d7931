"""Merge clusters of a conv layer's output channels: "fold, then prune".

Fold: in every producer of the channels (the conv, the BN entries that normalize them in every
layer that reads them, the other convs/BNs feeding the same residual stream, depthwise filters,
shortcut rows) each cluster's entries are averaged into the representative's slot; in every
consumer the members' input slices are summed into the representative's slice. Both happen at
the members' common scale (see `scales`), so filters equal up to BN scaling merge exactly. Prune:
the dependency graph then removes the other members everywhere at once. Exact duplicates (equal in
every producer) therefore merge with no change in the output.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..grouping.module import PermutedGroupedConv
from .graph import ChannelUse, is_grouped
from .layers import restore_plain_shuffles
from .scales import (channel_scales, is_batchnorm, member_scales, merge_batchnorm_clusters, merge_consumer,
                     merge_linear)

if TYPE_CHECKING:  # importing achroma.clustering pulls in scikit-learn; not needed at run time
    from ..clustering import Clustering


def cluster_groups(clustering: Clustering | Sequence[int] | np.ndarray, n_channels: int) -> list[tuple[int, list[int]]]:
    """(representative, members) per cluster, checked against the layer's channel count.

    A plain label array may mark outliers -1: each becomes a cluster of its own (as the notebook
    does); its representative is the cluster's lowest channel index.
    """
    if hasattr(clustering, "labels") and hasattr(clustering, "representatives"):  # a Clustering
        labels, reps = np.asarray(clustering.labels), list(clustering.representatives)
    else:
        labels = np.asarray(clustering)
        if labels.ndim != 1 or (labels.size and not np.all(np.equal(np.mod(labels, 1), 0))):
            raise ValueError("clustering must be a Clustering or a 1-D array of integer labels")
        labels = labels.astype(np.int64).copy()
        outliers = np.flatnonzero(labels == -1)
        labels[outliers] = labels.max(initial=-1) + 1 + np.arange(outliers.size)
        if np.any(labels < 0):
            raise ValueError("cluster labels must be >= 0 (or -1 for outliers)")
        reps = None
    if labels.size != n_channels:
        raise ValueError(f"clustering has {labels.size} labels but the layer has {n_channels} output channels")
    ids = np.unique(labels)
    if ids.size == 1 and n_channels > 1:
        raise ValueError(f"all {n_channels} filters are in one cluster: merging would leave a single channel; "
                         "use a smaller eps / more clusters")
    groups = []
    for cluster_id in ids:
        members = np.flatnonzero(labels == cluster_id).tolist()
        rep = members[0] if reps is None else int(reps[int(cluster_id)])
        if rep not in members:
            raise ValueError(f"representative {rep} is not a member of cluster {int(cluster_id)}")
        groups.append((rep, members))
    return groups


PRODUCER_TENSORS = ("weight", "bias", "border_kernel", "matrix")  # what a producer (not a BN) has per channel


def _channel_tensors(module: nn.Module, role: str) -> list[tuple[str, torch.Tensor, int]]:
    """(name, tensor, channel axis) that merging edits for this module and role (BN excluded)."""
    if role == "consumer":
        name = "matrix" if hasattr(module, "matrix") else "weight"
        return [(name, getattr(module, name), 1)]
    found = []
    for name in PRODUCER_TENSORS:
        t = getattr(module, name, None)
        if isinstance(t, torch.Tensor):
            found.append((name, t, 0))
    return found


def _visible(use: ChannelUse, groups: list[tuple[int, list[int]]]) -> list[tuple[int, list[int]]]:
    """The clusters this module sees at least two members of; ValueError for a cluster it sees in part."""
    out = []
    for rep, members in groups:
        present = [m for m in members if m in use.index]
        if present and len(present) < len(members):
            raise ValueError(f"{use.path}: the cluster of channels {members} is only partly visible here "
                             f"({len(present)} of {len(members)} members; a split or slice separates them): "
                             "cannot merge it")
        if len(present) > 1:
            out.append((rep, members))
    return out


def _any_tensor(module: nn.Module) -> torch.Tensor:
    return next(t for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)))


_CHUNK = 1 << 22  # numbers per float64 slice while folding a use


def _member_scales(scale: dict[int, torch.Tensor] | None, visible: list[tuple[int, list[int]]],
                   like: torch.Tensor) -> torch.Tensor:
    """Every visible member's r_c (clusters in order, members in order), float64 on `like`'s device; a
    cluster with a member that has no scale gets 1 for all (`member_scales`). No value is read on the
    host (meta tensors have none)."""
    one = torch.ones((), dtype=torch.float64, device=like.device)
    vals = [scale[m].to(dtype=torch.float64, device=like.device)
            if scale is not None and all(x in scale for x in members) else one
            for _, members in visible for m in members]
    return torch.stack(vals)


@torch.no_grad()
def _fold_use(module: nn.Module, use: ChannelUse, groups: list[tuple[int, list[int]]],
              scale: dict[int, torch.Tensor] | None) -> None:
    """Merge each cluster's entries into its representative's slots, in place, every cluster at once.

    Producers are averaged and consumers summed, both at the members' common scale (`scale`, root
    channel -> r_c, see `scales`; None: all 1): the representative's slot j becomes
    sum_c coef_c * t[slot_c j], coef_c = mean(r) / (n r_c) for a producer (`merge_linear`'s
    r_m mean(t_c / r_c)) and r_c / mean(r) for a consumer (`merge_consumer`'s). In-place edits go
    through the tensors themselves, not `.data`, so that their version counters move and cached maps
    (the fold's border) refresh.
    """
    visible = _visible(use, groups)
    if not visible:
        return
    like = _any_tensor(module)
    if use.role == "producer" and is_batchnorm(module):
        for slots in ([use.index[m] for m in members] for _, members in visible):
            if any(len(s) != 1 for s in slots):
                raise ValueError(f"{use.path}: a BatchNorm channel maps to several entries; cannot merge it")
        merged = merge_batchnorm_clusters(module, [[use.index[m][0] for m in members] for _, members in visible],
                                          _member_scales(scale, visible, like))
        reps = torch.tensor([use.index[rep][0] for rep, _ in visible], device=like.device)
        for name, value in merged.items():
            tensor = getattr(module, name)
            tensor.index_copy_(0, reps, value.to(tensor.dtype))
        return
    r = _member_scales(scale, visible, like)
    seg = torch.tensor([k for k, (_, members) in enumerate(visible) for _ in members], device=like.device)
    sizes = torch.tensor([len(members) for _, members in visible], dtype=torch.float64, device=like.device)
    mean = torch.zeros(len(visible), dtype=torch.float64, device=like.device).index_add_(0, seg, r) / sizes
    coef_member = r / mean[seg] if use.role == "consumer" else mean[seg] / (sizes[seg] * r)
    src, dst, member = [], [], []
    i = 0
    for rep, members in visible:
        for m in members:
            for a, b in zip(use.index[m], use.index[rep]):
                src.append(a), dst.append(b), member.append(i)
            i += 1
    order = sorted(set(dst))  # indices are worked out on the host: a meta tensor holds no values
    where = {d: k for k, d in enumerate(order)}
    src_t, reps = torch.tensor(src, device=like.device), torch.tensor(order, device=like.device)
    dst_local = torch.tensor([where[d] for d in dst], device=like.device)
    coef_t = coef_member[torch.tensor(member, device=like.device)]
    for _name, tensor, axis in _channel_tensors(module, use.role):
        shape = [1] * tensor.ndim
        shape[axis] = -1
        size = list(tensor.shape)
        size[axis] = len(reps)
        total = torch.zeros(size, dtype=torch.float64, device=tensor.device)
        per_entry = max(1, tensor.numel() // tensor.shape[axis])
        step = max(1, _CHUNK // per_entry)  # float64 copies of at most _CHUNK numbers at a time
        for a in range(0, len(src), step):
            picked = tensor.detach().index_select(axis, src_t[a:a + step]).double() * coef_t[a:a + step].view(shape)
            total.index_add_(axis, dst_local[a:a + step], picked)
        tensor.index_copy_(axis, reps, total.to(tensor.dtype))


@torch.no_grad()
def _fold_grouped_consumer(conv: nn.Conv2d, use: ChannelUse, groups: list[tuple[int, list[int]]],
                           scale: dict[int, torch.Tensor] | None) -> None:
    """Sum each cluster's input slices into the representative's, within the one group that reads them.

    A grouped conv's weight is (out, in/groups, k, k): input channel i is slot i % (in/groups) of
    group i // (in/groups), read only by that group's outputs. ChannelConstraints.check has made
    sure every cluster sits in one group. Slices are summed at the members' scales, as `_fold_use` does.
    """
    per, out_per = conv.in_channels // conv.groups, conv.out_channels // conv.groups
    weight = conv.weight
    for rep, members in _visible(use, groups):
        g = use.index[rep][0] // per
        rows = weight[g * out_per:(g + 1) * out_per]
        slots = [[use.index[m][0] % per] for m in members]
        value = merge_consumer(rows, 1, slots, member_scales(scale, members, weight))
        rows[:, use.index[rep][0] % per] = value[:, 0].to(weight.dtype)


@torch.no_grad()
def _fold_permuted_grouped(module: PermutedGroupedConv, use: ChannelUse, groups: list[tuple[int, list[int]]],
                           scale: dict[int, torch.Tensor] | None) -> None:
    """`_fold_use` for a PermutedGroupedConv: within the one group that holds a cluster's members.

    Consumer: the members' columns (original input channels, found through in_perm) are summed
    into the representative's column; producer: their rows (through out_perm) are averaged into
    the representative's row, bias too. ChannelConstraints.check has put each cluster in one group.
    """
    blocks = module.group_blocks()
    slot = module.input_slot if use.role == "consumer" else module.output_slot
    for rep, members in _visible(use, groups):
        places = [slot(use.index[m][0]) for m in members]
        if len({g for g, _ in places}) != 1:
            raise ValueError(f"{use.path}: the cluster of channels {members} spans several groups of the grouped "
                             "pointwise conv; a merged channel must stay within one group")
        g, rep_local = slot(use.index[rep][0])
        weight, bias = blocks[g]
        r = member_scales(scale, members, weight)
        locals_ = [[local] for _, local in places]
        if use.role == "consumer":
            weight[:, rep_local] = merge_consumer(weight, 1, locals_, r)[:, 0].to(weight.dtype)
        else:
            weight[rep_local] = merge_linear(weight, 0, locals_, r)[0].to(weight.dtype)
            if bias is not None:
                bias[rep_local] = merge_linear(bias, 0, locals_, r)[0].to(bias.dtype)


def _grouped_consumer_weights(modules: dict[str, nn.Module], uses: list[ChannelUse],
                              removed: list[int]) -> dict[str, torch.Tensor]:
    """The weights grouped consumer convs must have once `removed` root channels are gone.

    Torch-Pruning 1.6's ConvPruner.prune_in_channels keeps, for every group, the slots that group 0
    keeps (keep_idxs[:len // groups]): right when each group loses the same slots, wrong when the
    merged channels sit at different places in different groups. The right weights are made here,
    before pruning, and put back after it.
    """
    fixed = {}
    for use in uses:
        conv = modules[use.path]
        if use.role != "consumer" or not is_grouped(conv):
            continue
        per, out_per = conv.in_channels // conv.groups, conv.out_channels // conv.groups
        gone = {use.index[m][0] for m in removed if m in use.index}
        parts = []
        for g in range(conv.groups):
            keep = [s for s in range(per) if g * per + s not in gone]
            parts.append(conv.weight.data[g * out_per:(g + 1) * out_per][:, keep])
        fixed[use.path] = torch.cat(parts, 0)
    return fixed


def merge_traced(graph, layer_path: str, clustering: Clustering | Sequence[int] | np.ndarray,
                 *, fold: bool = True) -> nn.Module:
    """`groups.merge_channels` on a traced `ChannelGraph`'s copy of the model (edited in place and returned)."""
    work, dg = graph.work, graph.dg
    conv = graph.conv(layer_path)
    groups = cluster_groups(clustering, conv.out_channels)
    uses = graph.uses(layer_path)
    graph.constraints(layer_path).check(groups)  # grouped convs, channel splits
    modules = dict(work.named_modules())
    try:
        for use in uses:  # errors (a cluster cut by a split) before anything changes
            _visible(use, groups)
    except ValueError as err:
        raise ValueError(f"cannot merge the channels of layer {layer_path!r}: {err}") from None
    if fold:
        scales, reads = channel_scales(dg, uses, modules)
        for use in uses:
            scale = scales.get(use.path) or scales.get(reads.get(use.path, ""))
            if isinstance(modules[use.path], PermutedGroupedConv):
                _fold_permuted_grouped(modules[use.path], use, groups, scale)
            elif use.role == "consumer" and is_grouped(modules[use.path]):
                _fold_grouped_consumer(modules[use.path], use, groups, scale)
            else:
                _fold_use(modules[use.path], use, groups, scale)
    removed = sorted(m for rep, members in groups for m in members if m != rep)
    if removed:
        grouped = _grouped_consumer_weights(modules, uses, removed)
        pruner = dg.get_pruner_of_module(conv)
        dg.get_pruning_group(conv, pruner.prune_out_channels, removed).prune(record_history=False)
        dg.achroma_mapped, dg.achroma_walks = False, {}  # the graph no longer describes the model
        for path, weight in grouped.items():
            modules[path].weight = nn.Parameter(weight, requires_grad=modules[path].weight.requires_grad)
    restore_plain_shuffles(work)  # shuffles the merge did not reach become torchvision's own again
    work.achroma_surgery = True
    return work
