"""The search allocation: widths that meet a MACs and a parameter budget together, chosen by measurement.

Each group's damage curve is measured, not modelled: the group alone pruned (L1, the cheap proxy of
any selection) to each of a few widths, the BN statistics re-estimated on calibration images, then
the KL divergence from the uncompressed gray model's predictions on *other* calibration images
(AIMET's greedy compression-ratio selection measures per-layer curves the same way). Damages add up
over groups (the usual first-order assumption). The widths are then found greedily: from the full
model, one step off the group whose next step costs the least damage per unit of the budgets still
unmet (each cost counted as a share of its own full value), until every budget holds; then pairs of
moves (one group a step wider, another a step narrower) are taken while they lower the total damage
and keep the budgets. Deterministic: the images come from the seed, ties break by group order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .budget import WidthCost

SHARES = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875)  # the widths each group's damage is measured at
MIN_SHARE = 0.25  # no group keeps fewer than this share of its channels (and never fewer than 2)
SEARCH_IMAGES = 512  # calibration images: the first half re-estimates BN statistics, the second scores


@dataclass
class DamageCurves:
    """Per group, measured damage (KL, nats) at kept widths; the full width costs 0. Linear between."""

    points: dict[str, dict[int, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def damage(self, group: str, width: int) -> float:
        pts = sorted(self.points[group].items())
        if width >= pts[-1][0]:  # the full width
            return 0.0
        for (w0, d0), (w1, d1) in zip(pts, pts[1:]):
            if w0 <= width <= w1:
                return d0 + (d1 - d0) * (width - w0) / (w1 - w0)
        return math.inf  # below the narrowest width measured

    def total(self, widths: dict[str, int]) -> float:
        return sum(self.damage(g, w) for g, w in widths.items() if g in self.points)

    def to_dict(self) -> dict:
        return {"points": {g: {str(w): d for w, d in p.items()} for g, p in self.points.items()},
                "seconds": self.seconds}


@torch.no_grad()
def measure_curves(gray: nn.Module, cost: WidthCost, roots: Sequence[str], images: torch.Tensor) -> DamageCurves:
    """Damage of each group in `roots` pruned alone to each of `SHARES` (the widths `cost` allows)."""
    import time

    from ..repair.bn import bn_recalibrate
    from ..selection import magnitude_keep
    from ..surgery.prune import prune_channels

    start = time.perf_counter()
    gray = gray.eval()
    half = len(images) // 2
    stats, scored = images[:half], images[half:]
    reference = F.log_softmax(gray(scored).float(), dim=1)
    curves = DamageCurves()
    for root in roots:
        n = cost.channels[root]
        widths = sorted({cost.allowed(root, max(2, math.ceil(s * n))) for s in SHARES} - {n})
        curves.points[root] = {n: 0.0}
        for w in widths:
            try:
                keep = magnitude_keep(gray, root, w, stats[:1])
                pruned = prune_channels(gray, root, keep, stats[:1])
            except ValueError as err:
                raise ValueError(f"the search allocation cannot probe group {root} by pruning it: {err}") from None
            bn_recalibrate(pruned, [(stats, None)])
            logp = F.log_softmax(pruned.eval()(scored).float(), dim=1)
            curves.points[root][w] = float(F.kl_div(logp, reference, log_target=True, reduction="batchmean"))
    curves.seconds = time.perf_counter() - start
    return curves


def search_widths(cost: WidthCost, goals: dict[str, float], curves: DamageCurves, skip: Sequence[str] = ()
                  ) -> dict[str, int]:
    """Kept channels per group meeting every goal (share of the full cost, by 'macs'/'params') at the least
    total measured damage found by the greedy descent and the pairwise moves."""
    full = cost.full
    limit = {by: share * full[by] for by, share in goals.items()}
    free = [g for g in cost.channels if g not in skip and g in curves.points]
    widths = dict(cost.channels)

    def narrower(g: str, w: int) -> int | None:
        step = cost.limits.get(g, (1, None))[0]
        nxt = w - step
        floor = max(2, math.ceil(MIN_SHARE * cost.channels[g]), min(curves.points[g]))
        return nxt if nxt >= floor and cost.allowed(g, nxt) == nxt else None

    def unmet(c: dict[str, float]) -> dict[str, float]:
        return {by: c[by] - limit[by] for by in limit if c[by] > limit[by] + 1e-9}

    current = cost.cost(widths)
    while (over := unmet(current)):
        best = None
        for g in free:
            nxt = narrower(g, widths[g])
            if nxt is None:
                continue
            trial = cost.cost({**widths, g: nxt})
            gain = sum(min(current[by] - trial[by], over[by]) / full[by] for by in over)
            if gain <= 0:
                continue
            ratio = (curves.damage(g, nxt) - curves.damage(g, widths[g])) / gain
            if best is None or ratio < best[0]:
                best = (ratio, g, nxt, trial)
        if best is None:
            goal = ", ".join(f"{goals[by]:.0%} of the {by}" for by in over)
            raise ValueError(f"no allocation reaches {goal}: every group is at its narrowest allowed width")
        _, g, widths[g], current = best
    return _improve(cost, widths, limit, curves, free, narrower)


def _improve(cost: WidthCost, widths: dict[str, int], limit: dict[str, float], curves: DamageCurves,
             free: list[str], narrower, rounds: int = 100) -> dict[str, int]:
    """Pairwise moves (a wider, b narrower) that keep every budget and lower the total damage, best first."""
    for _ in range(rounds):
        base = curves.total(widths)
        best = None
        for a in free:
            step = cost.limits.get(a, (1, None))[0]
            wider = widths[a] + step
            if wider > cost.channels[a]:
                continue
            for b in free:
                nxt = narrower(b, widths[b]) if b != a else None
                if nxt is None:
                    continue
                trial = {**widths, a: wider, b: nxt}
                c = cost.cost(trial)
                if any(c[by] > limit[by] + 1e-9 for by in limit):
                    continue
                gain = base - curves.total(trial)
                if gain > 1e-12 and (best is None or gain > best[0]):
                    best = (gain, trial)
        if best is None:
            break
        widths = best[1]
    return widths
