"""Plan and apply the grouped pointwise transform on a trained model; rebuild it from a checkpoint.

    >>> plans = plan_grouping(model, min_channels=16, order="energy")
    >>> grouped = apply_grouping(model, plans)          # a copy; `model` is untouched
    >>> save_checkpoint("grouped", grouped, meta)       # the JSON carries the plans ("grouping")

`apply_grouping` replaces each planned `nn.Conv2d` by a `PermutedGroupedConv` whose grouped weights
are the dense weight's block diagonal in the planned channel order (and the bias, permuted). With
one group it is the dense conv exactly. `rebuild_grouping(model, plans)` makes the same modules
with no weights to copy, so that `load_checkpoint` can load a grouped model's state dict.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn as nn

from ..layers.grouped import group_count, split_sizes
from .find import find_pointwise_convs
from .module import PermutedGroupedConv
from .order import channel_order, energy_matrix, naive_order
from .plan import LayerPlan

#: The model attribute (and checkpoint JSON key) holding a grouped model's plans as dicts.
ATTR = "achroma_grouping"
META_KEY = "grouping"


def plan_grouping(model: nn.Module, min_channels: int = 16, order: str = "energy", rule: str = "seed",
                  groups: int | None = None, size: int = 32, seed: int = 0,
                  layers: Sequence[str] | None = None) -> list[LayerPlan]:
    """One `LayerPlan` per dense 1x1 conv of `model` with at least 2 x `min_channels` inputs.

    Group counts follow `rule` ('seed': the largest common divisor of both channel counts within
    in // min_channels, the seed's D6 rule; 'uneven': in // min_channels, any channel counts), or
    `groups` for every layer (capped at its channel counts); a layer the rule leaves with one group
    is not planned unless `groups` asks for it. `order`: 'energy' or 'naive' (see `order.py`); both
    orders' kept energies are recorded. `layers` restricts the plan to these module paths.
    """
    modules = dict(model.named_modules())
    plans = []
    for conv in find_pointwise_convs(model, min_channels, size):
        if layers is not None and conv.layer not in layers:
            continue
        if groups is not None:
            g = max(1, min(int(groups), conv.in_channels, conv.out_channels))
        else:
            g = group_count(conv.in_channels, conv.out_channels, min_channels, rule)
            if g <= 1:
                continue
        weight = modules[conv.layer].weight
        chosen = channel_order(weight, g, order, seed=seed)
        naive = chosen if order == "naive" else naive_order(energy_matrix(weight), g)
        plans.append(LayerPlan(conv.layer, conv.in_channels, conv.out_channels, g, chosen.in_perm, chosen.out_perm,
                               order=order, stride=conv.stride, bias=conv.bias, kept_energy=chosen.kept,
                               naive_kept_energy=naive.kept, out_pixels=conv.out_pixels,
                               extra={"start": chosen.start, "iterations": chosen.iterations}))
    return plans


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def _build(plan: LayerPlan, like: nn.Module) -> PermutedGroupedConv:
    ref = next(like.parameters(), None)
    kw = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    return PermutedGroupedConv(plan.in_channels, plan.out_channels, plan.groups, bias=plan.bias, stride=plan.stride,
                               in_perm=plan.in_perm, out_perm=plan.out_perm, in_splits=plan.in_splits,
                               out_splits=plan.out_splits, **kw).train(like.training)


def _record(model: nn.Module, plans: Sequence[LayerPlan]) -> None:
    done = {p["layer"]: p for p in getattr(model, ATTR, None) or []}
    done.update({p.layer: p.to_dict() for p in plans})
    setattr(model, ATTR, list(done.values()))


def apply_grouping(model: nn.Module, plans: Sequence[LayerPlan], inplace: bool = False,
                   dense_weights: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """`model` (a copy unless `inplace`) with every planned conv replaced and initialized from its weights.

    `dense_weights`: the (out, in) dense weight of a conv that is grouped already (its block
    diagonal), by path; a dense conv's own weight is used otherwise.
    The result remembers its plans (`achroma_grouping`), which `save_checkpoint` writes to the JSON.
    """
    out = model if inplace else copy.deepcopy(model)
    for plan in plans:
        old = out.get_submodule(plan.layer)
        if not isinstance(old, nn.Conv2d) or (old.in_channels, old.out_channels) != (plan.in_channels,
                                                                                     plan.out_channels):
            raise ValueError(f"plan for {plan.layer!r} ({plan.in_channels} -> {plan.out_channels}) does not match "
                             f"the model's {type(old).__name__}")
        weight = (dense_weights or {}).get(plan.layer, old.weight.detach())
        new = _build(plan, old).load_dense(weight, None if old.bias is None else old.bias.detach())
        _set_module(out, plan.layer, new)
    _record(out, plans)
    return out


def rebuild_grouping(model: nn.Module, plans: Sequence[LayerPlan | dict[str, Any]]) -> nn.Module:
    """Replace (in place) each planned conv by an untrained `PermutedGroupedConv` of the planned shape."""
    plans = [p if isinstance(p, LayerPlan) else LayerPlan.from_dict(p) for p in plans]
    for plan in plans:
        _set_module(model, plan.layer, _build(plan, model.get_submodule(plan.layer)))
    _record(model, plans)
    return model


def grouping_meta(model: nn.Module) -> list[dict[str, Any]] | None:
    """The plans a grouped model carries (for the checkpoint JSON), or None.

    Shapes, permutations and group sizes are read back from the layers themselves, so a model
    merged after grouping (`achroma compress`: channels removed through the grouped convs) is
    rebuilt with the shapes it has now, not those it was grouped with.
    """
    plans = getattr(model, ATTR, None)
    if not plans:
        return None
    out = []
    for plan in plans:
        plan = dict(plan)
        try:
            module = model.get_submodule(plan["layer"])
        except AttributeError:
            module = None
        if isinstance(module, PermutedGroupedConv):
            plan.update(in_channels=module.in_channels, out_channels=module.out_channels,
                        in_perm=module.input_permutation(), out_perm=module.output_permutation())
            plan.pop("in_splits", None)
            plan.pop("out_splits", None)
            if module.conv.in_splits != split_sizes(module.in_channels, module.groups):
                plan["in_splits"] = list(module.conv.in_splits)
            if module.conv.out_splits != split_sizes(module.out_channels, module.groups):
                plan["out_splits"] = list(module.conv.out_splits)
        out.append(plan)
    return out
