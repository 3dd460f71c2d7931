"""How a whole-network budget is shared among channel groups beyond a uniform keep: by sensitivity.

Sensitivity of a group: how far the model's predictions move (KL divergence from the uncompressed
gray model's softmax, on a few hundred calibration images) when that group alone loses half its
channels by L1 pruning (cheap: no fields, no repair). The budget is then met greedily, one channel
at a time, from the group where a channel costs least damage per MAC (or parameter) saved, with
damage modelled as sens_g * (removed share / 0.5)^2: convex, so a group's later channels cost more.
No group goes below a quarter of its channels (and 2): the damage model is probed at half, and a
group of one channel (which the greedy reached on a ResNet-20 at 50% MACs) cannot be merged at all.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .budget import Target, WidthCost

PROBE_IMAGES = 256  # calibration images the sensitivity is measured on (stratified)
PROBE_SHARE = 0.5  # each group is probed at half its channels
MIN_SHARE = 0.25  # no group keeps fewer than this share of its channels (and never fewer than 2)


def calibration_images(train_set, seed: int = 0, n: int = PROBE_IMAGES) -> torch.Tensor:
    """The raw gray batch an allocation is measured on: a seeded stratified subset of `train_set` (about n)."""
    from ..data import BatchLoader

    images = train_set.stratified_subset(max(1, n // train_set.num_classes), seed=seed)
    return torch.cat([x for x, _ in BatchLoader(images, n, mode="gray", normalize="none")])


@torch.no_grad()
def measure_sensitivity(gray: nn.Module, roots: Sequence[str], images: torch.Tensor) -> dict[str, float]:
    """KL(uncompressed || group pruned to half) on `images` (raw gray batch), per group root."""
    from ..selection import magnitude_keep
    from ..surgery.prune import prune_channels

    gray = gray.eval()
    example = images[:1]
    reference = F.log_softmax(gray(images).float(), dim=1)
    out = {}
    for root in roots:
        n = gray.get_submodule(root).out_channels
        keep = magnitude_keep(gray, root, max(1, round(PROBE_SHARE * n)), example)
        pruned = prune_channels(gray, root, keep, example).eval()
        logp = F.log_softmax(pruned(images).float(), dim=1)
        out[root] = float(F.kl_div(logp, reference, log_target=True, reduction="batchmean"))
    return out


def sensitivity_widths(cost: WidthCost, target: float, sensitivity: dict[str, float], by: Target = "macs",
                       skip: Sequence[str] = ()) -> dict[str, int]:
    """Kept channels per group meeting `target` x the full cost, removing channels greedily where the
    modelled damage per unit of cost saved is least (groups in `skip` or without a sensitivity stay whole)."""
    if not 0 < target <= 1:
        raise ValueError(f"target must be a share in (0, 1]; got {target}")
    goal = target * cost.full[by]
    widths = dict(cost.channels)
    free = [g for g in widths if g not in skip and g in sensitivity]
    floor = max(min(sensitivity[g] for g in free), 1e-12) * 1e-3 if free else 0.0

    def damage(g: str, kept: int) -> float:
        n = cost.channels[g]
        return (sensitivity[g] + floor) * ((n - kept) / n / PROBE_SHARE) ** 2

    current = cost.cost(widths)[by]
    while current > goal:
        best, best_ratio, best_cost, best_width = None, float("inf"), current, 0
        for g in free:
            step = cost.limits.get(g, (1, None))[0]
            nxt = widths[g] - step
            if nxt < max(2, math.ceil(MIN_SHARE * cost.channels[g])) or cost.allowed(g, nxt) != nxt:
                continue
            trial = cost.cost({**widths, g: nxt})[by]
            saved = current - trial
            if saved <= 0:
                continue
            ratio = (damage(g, nxt) - damage(g, widths[g])) / saved
            if ratio < best_ratio:
                best, best_ratio, best_cost, best_width = g, ratio, trial, nxt
        if best is None:
            raise ValueError(f"no allocation reaches {target:.0%} of the {by}: the groups left whole cost more")
        widths[best] = best_width
        current = best_cost
    return widths
