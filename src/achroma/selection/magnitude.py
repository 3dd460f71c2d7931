"""L1-magnitude pruning of a channel group by Torch-Pruning's own importance (no rewrite).

`magnitude_keep` ranks the group's channels with `torch_pruning.importance.MagnitudeImportance(p=1)`
on the whole pruning group, as Torch-Pruning's MagnitudePruner does: the L1 norm of every conv and
linear slice and BN weight that carries the channel (writers' filters, consumers' input slices),
averaged over the group's layers; it keeps the top `n_keep` and removes the others with the same
rule as the pruner (topk of the smallest). `surgery.prune_channels` then removes them.

Li et al.'s per-filter L1 (ICLR 2017) is `MagnitudeImportance(p=1, group_reduction="first",
normalizer=None)`, passed as `importance`. Torch-Pruning's importance only reads layers pruned by
its own conv/linear/BN functions; the folded first conv has a custom pruner in the surgery (for
its border kernel) and would be left out of its own group's score, so the graph used for the
score treats it as the plain Conv2d it is. Groups that meet a grouped conv or a channel split are
refused (ValueError): Torch-Pruning ranks those per block with its own averaging.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from ..fold.border import BorderCorrectedConv2d
from ..models.inspect import resolve_conv
from ..surgery.graph import (
    build_graph,
    channel_uses,
    constraints_of,
    prepare_for_surgery,
)
from ..surgery.layers import customized_pruners
from .base import Selected, Selection, SelectionInput, register_selection


def _score_graph(model: nn.Module, example_input: Any) -> tp.DependencyGraph:
    """The surgery's graph, with the folded conv pruned (hence scored) as a plain conv."""
    pruners = {t: p for t, p in customized_pruners().items() if t is not BorderCorrectedConv2d}
    return build_graph(model, example_input, pruners)


def magnitude_importance(model: nn.Module, path: str, example_input: Any,
                         importance: tp.importance.Importance | None = None) -> torch.Tensor:
    """Torch-Pruning's importance of each of `path`'s output channels, over its whole pruning group.

    Default `MagnitudeImportance(p=1)` (group mean of L1 norms). ValueError when the group meets a
    grouped conv or a channel split, or when the surgery could not remove its channels.
    """
    work = prepare_for_surgery(copy.deepcopy(model))
    conv = resolve_conv(work, path)
    dg = _score_graph(work, example_input)
    if conv not in dg.module2node:
        raise ValueError(f"layer {path!r} is not reached by a forward pass of the example input")
    uses = channel_uses(dg, work, conv)  # the surgery's checks: ValueError for groups it cannot cut
    if not constraints_of(dg, work, conv, path, uses).free:
        raise ValueError(f"layer {path!r}: its channels reach a grouped conv or a channel split; magnitude "
                         "pruning of constrained groups is not supported here")
    n = conv.out_channels
    group = dg.get_pruning_group(conv, dg.get_pruner_of_module(conv).prune_out_channels, list(range(n)))
    scorer = importance if importance is not None else tp.importance.MagnitudeImportance(p=1)
    scores = scorer(group)
    if scores is None:
        raise ValueError(f"layer {path!r}: Torch-Pruning found no weighted layer in its group to score")
    return scores.detach().cpu()


def magnitude_keep(model: nn.Module, path: str, n_keep: int, example_input: Any,
                   importance: tp.importance.Importance | None = None) -> list[int]:
    """The `n_keep` channels of `path`'s group that L1 magnitude pruning keeps, ascending."""
    scores = magnitude_importance(model, path, example_input, importance)
    n = scores.numel()
    if not 1 <= int(n_keep) <= n:
        raise ValueError(f"n_keep must be in [1, {n}]; got {n_keep}")
    pruned = set(torch.topk(scores, k=n - int(n_keep), largest=False).indices.tolist())
    return [c for c in range(n) if c not in pruned]


@register_selection
class L1Selection(Selection):
    name = "l1"
    help = "L1 pruning by Torch-Pruning's importance, no merge (is merging better than pruning?)"
    prunes = True

    def select(self, inp: SelectionInput) -> Selected:
        from ..clustering import keep_target
        from ..surgery.prune import pruning_clustering

        n = inp.group.channels
        keep = magnitude_keep(inp.model, inp.path, keep_target(n, inp.keep), inp.graph.example)
        return Selected(pruning_clustering(keep, n, layer=inp.path))
