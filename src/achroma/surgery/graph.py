"""Who produces and who reads a conv layer's output channels, from Torch-Pruning's dependency graph.

The graph is traced (autograd) from an example input, so no layer names are assumed: concat
(DenseNet), residual addition (ResNet), depthwise convs (MobileNet) and flatten -> Linear are all
mapped to each module's own channel layout. The result is plain data: per module, its role and
which local channel (or flattened feature) carries each channel of the root layer.

Some structures let a merge through only under conditions on the clustering, described by
`ChannelConstraints` (see `channel_constraints`): a grouped conv (ResNeXt, RegNet) mixes channels
only within a group, so a cluster must stay within one group of every grouped conv it reaches,
and every group must lose the same number of channels (the conv needs equal groups); a
chunk (channel split) cuts the channels into equal parts, so a cluster must stay within one part
and the parts must lose equally; a split whose sizes the code fixes (`x.split(n)`, `x.split([a, b])`)
lets no part lose any channel. ShuffleNet v2's channel
shuffle is made an explicit channel routing first (`convert_shuffles`, see layers.py).
"""
from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from ..grouping.module import PermutedGroupedConv
from ..models.inspect import conv_layer_names
from ..models.inspect import resolve_conv as _resolve_conv
from .layers import ChannelMapShortcut, convert_shortcuts, convert_shuffles, customized_pruners, dense_shortcuts

Role = Literal["producer", "consumer"]


@dataclass
class ChannelUse:
    """One module's share of a channel group.

    role 'producer': the module computes or normalizes the channels per channel (conv output
    filters, BN entries, depthwise filters, a shortcut's rows): merging averages its entries.
    role 'consumer': the module reads the channels as input slices (conv/linear input columns):
    merging sums the members' slices. index[c] lists the module's local indices that carry root
    channel c along its channel axis (several for a Linear behind a flatten), ascending.
    """

    path: str
    kind: str
    role: Role
    index: dict[int, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "role": self.role,
                "index": {str(k): v for k, v in self.index.items()}}


conv_paths = conv_layer_names  # every Conv2d's path, in definition order (one definition: models.inspect)


def build_graph(model: nn.Module, example_input: Any, pruners: dict | None = None) -> tp.DependencyGraph:
    """Trace `model` (whose option-A shortcuts must already be converted) into a dependency graph.

    `pruners`: Torch-Pruning pruners by layer type (default: `customized_pruners()`). Torch-Pruning
    leaves the traced model in eval mode; the train/eval flags are put back.
    """
    flags = {m: m.training for m in model.modules()}
    pruners = customized_pruners() if pruners is None else pruners
    try:
        with torch.enable_grad(), dense_shortcuts(), _unsized_concats_left_unmapped(), _ChunkCalls() as chunks:
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, customized_pruners=pruners, verbose=False)
    finally:
        for m, flag in flags.items():
            m.training = flag
    _fix_split_mappings(dg, chunks.grad_fns)
    _fix_concat_sizes(dg)
    dg.achroma_mapped = True  # index mappings final until something is pruned: `_walk_group` need not redo them
    return dg


class _ChunkCalls(torch.overrides.TorchFunctionMode):
    """Records the autograd nodes of the splits made by `chunk` during a trace.

    `x.chunk(k)` and `x.split(n)` leave the same autograd node (SplitBackward0 with a split size), but
    only a chunk follows a merge: its parts are a fraction of whatever channels arrive, while `split(n)`
    cuts at the constant n of the model's code (timm's CSPNet: a merged 510-channel stream split(256)
    gives parts of 256 and 254 where the next convs now read 255 each)."""

    def __init__(self):
        super().__init__()
        self.grad_fns: list = []  # the nodes themselves (kept alive: identity is compared, not ids)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") == "chunk" and isinstance(out, (tuple, list)):
            self.grad_fns.extend(t.grad_fn for t in out if isinstance(t, torch.Tensor) and t.grad_fn is not None)
        return out


@contextmanager
def _unsized_concats_left_unmapped() -> Iterator[None]:
    """While the graph is built, a concat with an input of unknown size is left unmapped (`_fix_concat_sizes`
    maps it once the splits are sized).

    Torch-Pruning 1.6 sizes a split made by `x.split(n)` from its readers while building; when a part has
    two readers (timm's CSPNet: the first half feeds both a block's conv and its residual add, then the
    concat) a part comes out as 0 channels, the add's size as None, and `update_concat_index_mapping`
    adds None to an int (TypeError) before its own `if ch is None: return`. That return is what is done here.
    """
    from torch_pruning.dependency import index_mapping

    original = index_mapping.update_concat_index_mapping

    def tolerant(graph, cat_node):
        try:
            return original(graph, cat_node)
        except TypeError:
            sizes = getattr(cat_node.module, "concat_sizes", None)
            if sizes is None or all(v is not None for v in sizes):
                raise
            cat_node.module.concat_sizes = None  # sized again, from the fixed splits, by _fix_concat_sizes

    index_mapping.update_concat_index_mapping = tolerant
    try:
        yield
    finally:
        index_mapping.update_concat_index_mapping = original


def _fix_concat_sizes(dg: tp.DependencyGraph) -> None:
    """Give every channel concat the sizes of its inputs, then let Torch-Pruning map it.

    Torch-Pruning 1.6 sizes a concat input that comes straight from a split with the split's whole
    input (its part sizes are not known yet when the graph is built: ShuffleNet's cat(x1, branch(x2))
    got [96, 48] for [48, 48]); the sizes then do not add up and it silently leaves the concat
    unmapped, i.e. identity, so the second input's channels land on the first input's slots. Here
    a split input is sized by the part it reads (its autograd edge), the rest as Torch-Pruning does.
    """
    from torch_pruning.dependency import index_mapping, shape_infer

    for node in list(dg.module2node.values()):
        if node.type != tp.ops.OPTYPE.CONCAT or getattr(node.grad_fn, "_saved_dim", None) != 1:
            continue
        edges = [(f, int(nr)) for f, nr in node.grad_fn.next_functions if f is not None]
        if len(edges) != len(node.inputs) or any(n.grad_fn is not f for n, (f, _) in zip(node.inputs, edges)):
            continue  # inputs not in argument order: leave Torch-Pruning's own mapping
        sizes = []
        for n, (_, nr) in zip(node.inputs, edges):
            if n.type == tp.ops.OPTYPE.SPLIT and n.module.split_sizes is not None:
                sizes.append(int(n.module.split_sizes[nr]))
            else:
                sizes.append(shape_infer.infer_out_channels_recursively(dg, n, [0]))
        if any(v is None for v in sizes):
            if getattr(node.module, "concat_sizes", None) is None:  # unmapped: a merge through it would be wrong
                node.module.achroma_unmappable = f"the sizes of the inputs of the concat {node.name} are unknown"
            continue
        node.module.concat_sizes = sizes
        index_mapping.update_concat_index_mapping(dg, node)


def _fix_split_mappings(dg: tp.DependencyGraph, chunk_grad_fns: Sequence = ()) -> None:
    """Map each part of a channel split (chunk/split) to the op that really reads it.

    Torch-Pruning 1.6 (index_mapping.update_split_index_mapping) gives the i-th *output node* of a
    split the i-th part, but its output nodes are listed in the order the trace met them, not in
    the order of the parts: on conv -> chunk(2) -> conv_a(x1), conv_b(x2) it maps the first half to
    conv_b. It also sizes the parts as split_size x (number of output nodes), wrong when a part
    has two readers. Here the part an output node reads is taken from its autograd edge to the
    split (next_functions holds (SplitBackward, part number)), the sizes from the saved split
    sizes, and Torch-Pruning is told not to overwrite the mapping (enable_index_mapping = False).
    A split of one size that no `chunk` made (`chunk_grad_fns`, see `_ChunkCalls`) is `x.split(n)`:
    its sizes are constants of the code (fixed), like those of `x.split([a, b])`.
    """
    from torch_pruning.dependency.index_mapping import _SplitIndexMapping

    for node in list(dg.module2node.values()):
        if node.type != tp.ops.OPTYPE.SPLIT:
            continue
        fn = node.grad_fn
        sizes_of = getattr(fn, "_saved_self_sym_sizes", None)
        if getattr(fn, "_saved_dim", None) != 1 or sizes_of is None or len(sizes_of) < 2:
            continue  # not a channel split
        total = int(sizes_of[1])
        if hasattr(fn, "_saved_split_sizes"):
            sizes, fixed = [int(v) for v in fn._saved_split_sizes], True
        else:
            size = int(fn._saved_split_size)
            sizes = [min(size, total - start) for start in range(0, total, size)]
            fixed = not any(fn is f for f in chunk_grad_fns)
        offsets = [0]
        for v in sizes:
            offsets.append(offsets[-1] + v)
        node.module.split_sizes, node.module.offsets = sizes, offsets
        node.module.achroma_fixed_sizes = fixed
        node.enable_index_mapping = False
        for out_node in node.outputs:
            parts = {int(nr) for f, nr in getattr(out_node.grad_fn, "next_functions", ()) if f is fn}
            if len(parts) != 1:  # no direct edge, or one op reading several parts: refuse if a merge gets here
                node.module.achroma_unmappable = f"{len(parts)} parts of it reach {out_node.name} at once"
                continue
            k = parts.pop()
            for dep in node.dependencies:
                if dep.target is out_node:
                    dep.index_mapping[0] = _SplitIndexMapping(offset=offsets[k:k + 2], reverse=False)
            for dep in out_node.dependencies:
                if dep.target is node:
                    dep.index_mapping[0] = _SplitIndexMapping(offset=offsets[k:k + 2], reverse=True)


def grouped_owner(model: nn.Module, path: str) -> str | None:
    """The path of the PermutedGroupedConv (`achroma group`) that `path` lies inside, or None."""
    parts = path.split(".")
    for k in range(len(parts) - 1, 0, -1):
        owner = ".".join(parts[:k])
        try:
            module = model.get_submodule(owner)
        except AttributeError:
            continue
        if isinstance(module, PermutedGroupedConv):
            return owner
    return None


def resolve_conv(model: nn.Module, path: str) -> nn.Conv2d:
    """models.inspect.resolve_conv, refusing the convs inside a grouped pointwise conv (clear ValueError)."""
    conv = _resolve_conv(model, path)
    owner = grouped_owner(model, path)
    if owner is not None:
        raise ValueError(f"layer {path!r} is part of the grouped pointwise conv {owner!r} (achroma group): merging its "
                         "filters is not supported (their order and groups are the grouped conv's); merge before "
                         "grouping, or merge the layers that feed it")
    return conv


_LAYERNORM: ContextVar[str] = ContextVar("achroma_layernorm", default="refuse")


@contextmanager
def layernorm_merges(mode: str = "merge") -> Iterator[None]:
    """Within: a LayerNorm over a group's channels is 'refuse'd (a ValueError naming it, the default) or
    'merge'd as a producer: its affine entries are averaged like BatchNorm's, and its statistics are then
    taken over the channels that remain, which no merge keeps exact (`CompressConfig.layernorm`)."""
    if mode not in ("refuse", "merge"):
        raise ValueError(f"layernorm must be 'refuse' or 'merge'; got {mode!r}")
    token = _LAYERNORM.set(mode)
    try:
        yield
    finally:
        _LAYERNORM.reset(token)


def prepare_for_surgery(model: nn.Module) -> nn.Module:
    """In place: option-A shortcuts become channel maps, ShuffleNet shuffles explicit routings (both exact)."""
    return convert_shuffles(convert_shortcuts(model))


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.in_channels == module.out_channels


def is_grouped(module: nn.Module) -> bool:
    """A grouped conv that is not depthwise (ResNeXt, RegNet): channels mix only within a group."""
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and not is_depthwise(module)


def _role(dg: tp.DependencyGraph, module: nn.Module, handler, path: str) -> Role | None:
    """Producer/consumer for the modules we know how to merge; None for parameter-free graph ops.

    Raises ValueError, naming the layer, for modules whose per-channel state cannot be merged
    exactly (LayerNorm over channels, bare parameters such as position embeddings or class tokens).
    """
    if isinstance(module, nn.Parameter):
        raise ValueError(f"channel group reaches the bare parameter {path!r} (e.g. a class token or position "
                         "embedding added to the channels); merging it is not supported")
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "producer"
    if getattr(module, "achroma_unmappable", None):
        raise ValueError(f"a channel split or concat in the group cannot be mapped: {module.achroma_unmappable}")
    if isinstance(module, nn.LayerNorm) and _LAYERNORM.get() == "merge" and module.weight is not None \
            and len(module.normalized_shape) == 1:
        return "producer"  # approximate (layernorm_merges): its affine is averaged, its statistics change
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        raise ValueError(f"layer {path!r} ({type(module).__name__}) normalizes over the channels of the group: "
                         "its statistics change when channels merge, so no merge is exact (an approximate "
                         "merge: --layernorm merge, CompressConfig(layernorm='merge'); measured in docs/RESULTS.md)")
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed:
            raise ValueError(f"transposed conv {path!r} in the channel group is not supported")
        if is_depthwise(module):
            return "producer"  # depthwise: channel c in -> channel c out, its filter is per channel
        # plain and grouped convs; grouped ones constrain the clustering (ChannelConstraints)
        return "producer" if dg.is_out_channel_pruning_fn(handler) else "consumer"
    if isinstance(module, (nn.Linear, ChannelMapShortcut, PermutedGroupedConv)):
        return "producer" if dg.is_out_channel_pruning_fn(handler) else "consumer"
    has_state = any(True for _ in module.parameters(recurse=False)) or any(
        b.is_floating_point() for b in module.buffers(recurse=False))
    if has_state:
        raise ValueError(f"layer {path!r} ({type(module).__name__}) in the channel group holds per-channel "
                         "state that merging does not know how to combine")
    return None


def _root_pruning_fn(dg: tp.DependencyGraph, conv: nn.Module):
    if isinstance(conv, nn.modules.conv._ConvNd) and conv.groups == conv.out_channels and conv.out_channels > 1:
        from torch_pruning.pruner import function
        return function.prune_depthwise_conv_out_channels  # as DependencyGraph.get_pruning_group does
    return dg.get_pruner_of_module(conv).prune_out_channels


def _walk_group(dg: tp.DependencyGraph, conv: nn.Module, check) -> dict[tuple[Any, Any], set[tuple[int, int]]]:
    """Torch-Pruning's group search (DependencyGraph.get_pruning_group), breadth first, checking each module.

    The same propagation through the same dependencies and index mappings, but every new module is
    passed to `check` as soon as it is reached, so an unmergeable layer ends the search at once
    (Torch-Pruning's depth-first search can first wander into, e.g., Swin v2's position-bias MLP,
    whose flatten mappings multiply the indices until memory runs out), and indices already seen
    at a module are not propagated again. Returns {(node, handler): {(local index, root index)}}.
    """
    from torch_pruning import _helpers
    from torch_pruning.dependency import index_mapping
    from torch_pruning.dependency.dependency import Dependency

    walks = dg.__dict__.setdefault("achroma_walks", {})  # the same root walked again (uses, then constraints)
    if conv in walks:
        for node, handler in walks[conv]:
            check(node.module, handler)
        return walks[conv]
    if not getattr(dg, "achroma_mapped", False):  # a graph not from `build_graph`: as get_pruning_group does
        index_mapping.update_index_mapping(dg)
    fn = _root_pruning_fn(dg, conv)
    root = dg.module2node[conv]
    start = [_helpers._HybridIndex(idx=i, root_idx=i) for i in range(conv.out_channels)]
    found: dict[tuple[Any, Any], set[tuple[int, int]]] = {(root, fn): {(i, i) for i in range(conv.out_channels)}}
    check(root.module, fn)
    queue = deque([(Dependency(fn, fn, source=root, target=root), start)])
    while queue:
        dep, idxs = queue.popleft()
        node, handler = dep.target, dep.handler
        for new_dep in node.dependencies:
            if not new_dep.is_triggered_by(handler):
                continue
            new = idxs
            for mapping in new_dep.index_mapping:
                if mapping is not None:
                    new = mapping(new)
            if len(new) == 0:
                continue
            key = (new_dep.target, new_dep.handler)
            if key not in found:
                check(new_dep.target.module, new_dep.handler)
            seen = found.setdefault(key, set())
            fresh = [i for i in new if (int(i.idx), int(i.root_idx)) not in seen]
            if not fresh:
                continue
            seen.update((int(i.idx), int(i.root_idx)) for i in fresh)
            queue.append((new_dep, fresh))
    if getattr(dg, "achroma_mapped", False):
        walks[conv] = found
    return found


def channel_uses(dg: tp.DependencyGraph, model: nn.Module, conv: nn.Module) -> list[ChannelUse]:
    """Every module touched by `conv`'s output channels, with its role and root -> local index map."""
    names: dict[Any, str] = {m: n for n, m in model.named_modules()}
    names.update({p: n for n, p in model.named_parameters()})
    if conv not in dg.module2node:
        path = names.get(conv, type(conv).__name__)
        resolve_conv(model, path)  # a conv inside a grouped pointwise conv: say so
        raise ValueError(f"layer {path!r} is not reached by a forward pass of the example input")

    def path_of(module) -> str:
        return names.get(module, type(module).__name__)

    def check(module, handler) -> None:
        try:
            _role(dg, module, handler, path_of(module))
        except ValueError as err:
            raise ValueError(f"cannot merge the channels of layer {path_of(conv)!r}: {err}") from None

    uses: dict[tuple[int, Role], ChannelUse] = {}
    for (node, handler), pairs in _walk_group(dg, conv, check).items():
        module = node.module
        path = path_of(module)
        role = _role(dg, module, handler, path)
        if role is None:
            continue
        use = uses.setdefault((id(module), role), ChannelUse(path, type(module).__name__, role))
        for local, root in pairs:
            slots = use.index.setdefault(root, [])
            if local not in slots:
                slots.append(local)
    modules = dict(model.named_modules())
    for use in uses.values():
        use.index = {root: sorted(slots) for root, slots in sorted(use.index.items())}
        tied = next((slots for slots in use.index.values() if len(slots) > 1), None)
        if (use.role == "producer" and tied is not None
                and isinstance(modules.get(use.path), nn.modules.batchnorm._BatchNorm)):
            raise ValueError(f"cannot merge the channels of layer {path_of(conv)!r}: BatchNorm {use.path!r} holds "
                             f"entries {tied} for one channel of the group: channels are tied to each other (e.g. a "
                             "depthwise conv's output concatenated back into the same stream, GhostNet's ghost "
                             "module), so no channel can be merged on its own")
    return list(uses.values())


@dataclass
class Partition:
    """One structure's cut of the root channels into blocks: block[c] is root channel c's block.

    A cluster must not straddle two blocks; when `balanced`, every one of the `n_blocks` blocks
    must lose the same number of channels (blocks no root channel reaches lose none).
    """

    path: str
    reason: str  # e.g. "groups of grouped conv" / "parts of a channel split"
    n_blocks: int
    balanced: bool
    block: dict[int, int] = field(default_factory=dict)
    fixed: bool = False  # no block may lose any channel (a split whose sizes the code fixes)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "reason": self.reason, "n_blocks": self.n_blocks, "balanced": self.balanced,
                "fixed": self.fixed, "block": {str(k): v for k, v in self.block.items()}}


@dataclass
class ChannelConstraints:
    """Which output channels of `layer` may share a cluster, and which blocks must lose equally."""

    layer: str
    n_channels: int
    partitions: list[Partition] = field(default_factory=list)

    @property
    def free(self) -> bool:
        """No constraint: any clustering merges."""
        return not self.partitions

    def blocks(self) -> list[list[int]]:
        """The finest blocks (channels in one block of every partition), in order of their first channel."""
        by_key: dict[tuple[int, ...], list[int]] = {}
        for c in range(self.n_channels):
            by_key.setdefault(tuple(p.block.get(c, -1) for p in self.partitions), []).append(c)
        return list(by_key.values())

    def check(self, groups: Sequence[tuple[int, Sequence[int]]]) -> None:
        """ValueError (naming the layer, the structure and the reason) unless (rep, members) clusters fit."""
        for part in self.partitions:
            for rep, members in groups:
                blocks = sorted({part.block[m] for m in members if m in part.block})
                if len(blocks) > 1:
                    raise ValueError(
                        f"layer {self.layer!r}: the cluster of channels {sorted(members)} straddles the {part.reason} "
                        f"{part.path!r} (blocks {blocks}); a merged channel must stay within one block "
                        "(cluster within each block: ChannelConstraints.blocks())")
            if part.fixed and any(m != rep and m in part.block for rep, members in groups for m in members):
                raise ValueError(f"layer {self.layer!r}: the {part.reason} cannot lose channels: "
                                 "the split sizes are constants of the model's code")
            if part.balanced:
                lost = [0] * part.n_blocks
                for rep, members in groups:
                    for m in members:
                        if m != rep and m in part.block:
                            lost[part.block[m]] += 1
                if len(set(lost)) > 1:
                    raise ValueError(
                        f"layer {self.layer!r}: unbalanced clustering for the {part.reason} {part.path!r}: it "
                        f"removes {lost} channels from its {part.n_blocks} blocks, but they must stay equal in "
                        "size (a standard grouped conv needs equal groups; chunk splits in equal parts): remove "
                        "the same number from every block")

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "n_channels": self.n_channels, "partitions": [p.to_dict() for p in self.partitions]}


def constraints_of(dg: tp.DependencyGraph, model: nn.Module, conv: nn.Module, layer: str,
                   uses: Sequence[ChannelUse]) -> ChannelConstraints:
    """The constraints `uses` (from `channel_uses`) put on clustering `layer`'s output channels."""
    modules = dict(model.named_modules())
    result = ChannelConstraints(layer, conv.out_channels)
    for use in uses:
        module = modules.get(use.path)
        if isinstance(module, PermutedGroupedConv) and module.groups > 1:
            # a cluster stays within one group (found through the permutation); groups may shrink
            # unequally (the layer takes any group sizes), so the partition is not balanced
            side = "input" if use.role == "consumer" else "output"
            slot = module.input_slot if use.role == "consumer" else module.output_slot
            result.partitions.append(Partition(
                use.path, f"groups ({side} channels) of grouped pointwise conv (groups={module.groups}, permuted)",
                module.groups, False, {root: slot(slots[0])[0] for root, slots in use.index.items()}))
            continue
        if not is_grouped(module):
            continue
        width = (module.in_channels if use.role == "consumer" else module.out_channels) // module.groups
        side = "input" if use.role == "consumer" else "output"
        result.partitions.append(Partition(
            use.path, f"groups ({side} channels) of grouped conv (groups={module.groups})", module.groups, True,
            {root: slots[0] // width for root, slots in use.index.items()}))
    names = {m: n for n, m in model.named_modules()}
    for (node, handler), pairs in _walk_group(dg, conv, lambda *a: None).items():
        split = node.module
        if not isinstance(split, tp.ops._SplitOp) or split.offsets is None:
            continue
        offsets = list(split.offsets)
        sizes = [b - a for a, b in zip(offsets, offsets[1:])]
        block = {}
        for local, root in pairs:
            part = next(i for i in range(len(sizes)) if offsets[i] <= local < offsets[i + 1])
            block.setdefault(root, part)
        path = names.get(split, f"split after {names.get(conv, 'the layer')}")
        fixed = getattr(split, "achroma_fixed_sizes", False)
        what = "split with sizes fixed in the code" if fixed else "chunk"
        result.partitions.append(Partition(path, f"parts (sizes {sizes}) of a channel {what}", len(sizes),
                                           True, block, fixed))
    return result


def trace_channel_uses(model: nn.Module, layer_path: str, example_input: Any) -> list[ChannelUse]:
    """Inspect the channel group of `layer_path` without changing `model` (works on a copy).

    Paths of option-A shortcuts appear as ChannelMapShortcut uses (see `convert_shortcuts`).
    """
    work, dg, conv = _traced_copy(model, layer_path, example_input)
    return channel_uses(dg, work, conv)


def channel_constraints(model: nn.Module, layer_path: str, example_input: Any) -> ChannelConstraints:
    """What a clustering of `layer_path`'s output channels must respect to merge (works on a copy).

    Raises the same ValueError as `merge_channels` when the group cannot be merged at all.
    """
    return trace_channel_group(model, layer_path, example_input)[1]


def trace_channel_group(model: nn.Module, layer_path: str,
                        example_input: Any) -> tuple[list[ChannelUse], ChannelConstraints]:
    """(uses, constraints) of `layer_path`'s channel group from one trace (works on a copy)."""
    work, dg, conv = _traced_copy(model, layer_path, example_input)
    uses = channel_uses(dg, work, conv)
    return uses, constraints_of(dg, work, conv, layer_path, uses)


def _traced_copy(model: nn.Module, layer_path: str, example_input: Any):
    import copy

    resolve_conv(model, layer_path)
    work = prepare_for_surgery(copy.deepcopy(model))
    conv = resolve_conv(work, layer_path)
    dg = build_graph(work, example_input)
    if conv not in dg.module2node:
        raise ValueError(f"layer {layer_path!r} is not reached by a forward pass of the example input")
    return work, dg, conv
