"""Plan a whole-network budget: the width of every channel group of a folded gray model.

The groups come from the model's `ChannelGraph` (the definition the merge uses), with the widths
their constraints allow; costs from `WidthCost` (exact parameters and FlopCounter MACs for any
widths); the share per group from the allocation ('uniform', or 'sensitivity').
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .allocation import measure_sensitivity, sensitivity_widths
from .budget import Budget, BudgetPlan, Target, round_widths, uniform_widths, width_cost
from .search import JointDamage, SearchLog, search_widths


def plan_widths(gray: nn.Module, budget: Budget, size: int = 32, calibration: torch.Tensor | None = None,
                groups: Sequence | None = None) -> BudgetPlan:
    """Widths for every channel group of `gray` (a folded, 1-channel model) that meet `budget`.

    `groups`: the model's channel groups when already traced (`ChannelGraph.groups()`);
    `calibration`: a raw gray image batch, for the sensitivity allocation.
    """
    from ..surgery.groups import channel_groups

    p = next(gray.parameters())
    if groups is None:
        groups = channel_groups(gray, torch.zeros(1, 1, size, size, dtype=p.dtype, device=p.device))
    refused = {g.root: g.refused for g in groups if g.refused}
    writers = {w: g.root for g in groups for w in g.writers}
    unknown = [s for s in budget.skip if s not in writers]
    if unknown:
        raise ValueError(f"skip {', '.join(unknown)}: not a conv that writes a channel group; "
                         f"groups: {', '.join(g.root for g in groups)}")
    skipped = sorted({writers[s] for s in budget.skip})
    cost = width_cost(gray, groups, (1, size, size))
    log = SearchLog() if budget.allocation == "search" else None
    try:
        widths = _widths(gray, cost, budget, skipped, calibration, groups, log)
    except ValueError as err:
        if refused:  # say which structures kept the groups out of the plan
            first = next((r for r in refused.values() if "model's outputs" not in r), next(iter(refused.values())))
            raise ValueError(f"{err}. {len(refused)} of {len(groups)} channel groups cannot be merged at all, e.g. "
                             f"{first}") from None
        raise
    layers = [g for g, n in widths.items() if n < cost.channels[g]]
    return BudgetPlan(layers, [widths[g] / cost.channels[g] for g in layers], widths, cost.cost(widths), cost.full,
                      skipped, refused, None if log is None else log.to_dict())


def _widths(gray: nn.Module, cost, budget: Budget, skipped: list[str], calibration: torch.Tensor | None,
            groups: Sequence, log: SearchLog | None = None) -> dict[str, int]:
    p = next(gray.parameters())
    if budget.allocation == "uniform":
        return uniform_widths(cost, budget.goals, skip=skipped, round_to=budget.round_to)
    if calibration is None:
        raise ValueError(f"the {budget.allocation} allocation needs calibration images")
    roots = [g for g in cost.channels if g not in skipped]
    images = calibration.to(p.device, p.dtype)
    if budget.allocation == "search":
        start = uniform_widths(cost, budget.goals, skip=skipped, round_to=budget.round_to)
        widths = search_widths(cost, budget.goals, JointDamage(gray, groups, images), start, skip=skipped,
                               log=log)
    else:
        if len(budget.goals) > 1:
            raise ValueError("the sensitivity allocation meets one budget: give macs or params, not both "
                             "(the search allocation meets both)")
        (by, target), = budget.goals.items()
        widths = sensitivity_widths(cost, target, measure_sensitivity(gray, roots, images), by, skip=skipped)
    if budget.round_to > 1:  # rounded down: the cost only falls; then to widths the groups allow
        widths = {g: cost.allowed(g, w) for g, w in round_widths(widths, cost.channels, budget.round_to).items()}
    return widths


def plan_budget(color_model: nn.Module, normalization, target: float, by: Target = "macs",
                skip: Sequence[str] = (), size: int = 32, allocation: str = "uniform",
                calibration: torch.Tensor | None = None, round_to: int = 1) -> BudgetPlan:
    """`plan_widths` for a color model: folded to gray first (the fold is exact)."""
    from ..fold import fold_to_gray

    gray, _ = fold_to_gray(color_model, normalization)
    return plan_widths(gray, Budget(**{by: target}, skip=tuple(skip), allocation=allocation, round_to=round_to), size,
                       calibration)
