"""The search allocation: widths that meet a MACs and a parameter budget together, chosen by measurement.

A local search from the uniform plan (which meets every budget). The damage of a plan is measured
on the whole network at once: in every group, the channels of least L1 weight (summed over the
group's writers) are zeroed in every module that writes them, as if pruned; the BatchNorm statistics
are re-estimated on half of the calibration images (the cheap repair), and the damage is the KL
divergence from the uncompressed gray model's predictions on the other half. Each round measures
every group one step narrower and one step wider (a step: 1/16 of the group's channels, at least
what its constraints allow), then tries the moves the budgets allow, predicted best first: one group
wider alone (budget left unused), or one wider and another narrower; a move is taken only when its
measured damage is lower. It stops when no move helps, after `MAX_ROUNDS` rounds or `MAX_SECONDS`.

Measured jointly because damages do not add up: scored one group at a time (AIMET's per-layer
curves), the ResNet-20's residual streams looked cheap to cut and a plan that cut them to a quarter
and kept every inner conv whole scored 69% after an epoch of distillation, against 80% for the
uniform plan (docs/RESULTS.md, issue 22). Deterministic: the images come from the seed, ties break
by group order.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .budget import WidthCost

SEARCH_IMAGES = 512  # calibration images: the first half re-estimates BN statistics, the second scores
STEPS = 16  # a move changes a group by 1/STEPS of its channels (at least its constraint step)
MIN_SHARE = 0.25  # no group keeps fewer than this share of its channels (and never fewer than 2)
MAX_ROUNDS = 40
MAX_SECONDS = 300.0  # the search stops after the round that passes this


class JointDamage:
    """The damage (KL, nats) of a whole plan: lowest-L1 channels zeroed in every writer, BN re-estimated."""

    def __init__(self, gray: nn.Module, groups: Sequence, images: torch.Tensor) -> None:
        from ..surgery.graph import prepare_for_surgery

        self.work = prepare_for_surgery(copy.deepcopy(gray)).eval()  # the paths the groups' uses name
        half = len(images) // 2
        self.stats, self.scored = images[:half], images[half:]
        with torch.no_grad():
            self.reference = F.log_softmax(self.work(self.scored).float(), dim=1)
        modules = dict(self.work.named_modules())
        self.producers: dict[str, list[tuple[str, dict[int, list[int]]]]] = {}
        self.order: dict[str, list[int]] = {}
        for g in groups:
            if g.refused is not None:
                continue
            writers = [(u.path, u.index) for u in g.uses if u.role == "producer" and u.path in modules
                       and _tensors(modules[u.path])]
            self.producers[g.root] = writers
            self.order[g.root] = _least_first(modules, writers, g.channels)
        self.evaluations = 0

    @torch.no_grad()
    def __call__(self, widths: dict[str, int]) -> float:
        from ..repair.bn import bn_recalibrate

        model = copy.deepcopy(self.work)
        modules = dict(model.named_modules())
        for root, w in widths.items():
            order = self.order.get(root)
            if order is None or w >= len(order):
                continue
            drop = order[:len(order) - w]
            for path, index in self.producers[root]:
                slots = torch.tensor([s for c in drop for s in index.get(c, [])], dtype=torch.long)
                for t in _tensors(modules[path]):
                    t.index_fill_(0, slots.to(t.device), 0.0)
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules.values()):  # LayerNorm nets: none
            bn_recalibrate(model, [(self.stats, None)])
        logp = F.log_softmax(model.eval()(self.scored).float(), dim=1)
        self.evaluations += 1
        return float(F.kl_div(logp, self.reference, log_target=True, reduction="batchmean"))


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    """A writer's per-output-channel tensors (rows on axis 0): zeroing them zeroes the channel."""
    if not isinstance(module, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)) and \
            not hasattr(module, "matrix"):
        return []
    return [t for name in ("weight", "bias", "border_kernel", "matrix")
            if isinstance(t := getattr(module, name, None), torch.Tensor)]


def _least_first(modules: dict[str, nn.Module], writers: list[tuple[str, dict[int, list[int]]]], n: int) -> list[int]:
    """The group's channels by L1 weight summed over its conv/linear writers (each writer's norms over
    their mean, so that no writer dominates by scale), least first; ties by index."""
    score = torch.zeros(n, dtype=torch.float64)
    for path, index in writers:
        m = modules[path]
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        norms = m.weight.detach().double().abs().flatten(1).sum(1).cpu()
        per = torch.tensor([float(sum(norms[s] for s in index.get(c, [])) if index.get(c) else 0.0) for c in range(n)],
                           dtype=torch.float64)
        score += per / per.mean().clamp_min(1e-30)
    return sorted(range(n), key=lambda c: (float(score[c]), c))


@dataclass
class SearchLog:
    """What the search did: the damage of the start and of each accepted move, evaluations, seconds."""

    start: float = 0.0
    moves: list[dict] = field(default_factory=list)
    evaluations: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"start_damage": self.start, "moves": self.moves, "evaluations": self.evaluations,
                "seconds": self.seconds}


def search_widths(cost: WidthCost, goals: dict[str, float], damage: Callable[[dict[str, int]], float],
                  start: dict[str, int], skip: Sequence[str] = (), log: SearchLog | None = None,
                  max_rounds: int | None = None, max_seconds: float | None = None) -> dict[str, int]:
    """Kept channels per group meeting every goal (share of the full cost, by 'macs'/'params'), from
    `start` (a plan that meets them) by the moves that lower the measured `damage` (see the module)."""
    began = time.perf_counter()
    max_rounds = MAX_ROUNDS if max_rounds is None else max_rounds
    max_seconds = MAX_SECONDS if max_seconds is None else max_seconds
    log = log if log is not None else SearchLog()
    limit = {by: share * cost.full[by] for by, share in goals.items()}
    free = [g for g in cost.channels if g not in skip and g in getattr(damage, "order", cost.channels)]

    def fits(w: dict[str, int]) -> bool:
        got = cost.cost(w)
        return all(got[by] <= limit[by] * (1 + 1e-12) for by in limit)

    def step(g: str, w: int, sign: int) -> int | None:
        n = cost.channels[g]
        size = max(cost.limits.get(g, (1, None))[0], math.ceil(n / STEPS))
        nxt = min(n, w + size) if sign > 0 else w - size
        if sign < 0:
            if nxt < max(2, math.ceil(MIN_SHARE * n)):
                return None
            nxt = cost.allowed(g, nxt)
        return nxt if nxt != w and 1 <= nxt <= n else None

    widths = dict(start)
    current = damage(widths)
    log.start = current
    for _ in range(max_rounds):
        if time.perf_counter() - began > max_seconds:
            break
        wider = {g: (w, damage({**widths, g: w}) - current) for g in free if (w := step(g, widths[g], 1))}
        narrower = {g: (w, damage({**widths, g: w}) - current) for g in free if (w := step(g, widths[g], -1))}
        moves = [(dw, (a,), {a: wa}) for a, (wa, dw) in wider.items() if fits({**widths, a: wa})]
        moves += [(dw + dn, (a, b), {a: wa, b: wb}) for a, (wa, dw) in wider.items()
                  for b, (wb, dn) in narrower.items() if a != b and fits({**widths, a: wa, b: wb})]
        moves.sort(key=lambda m: (m[0], m[1]))
        taken = False
        for predicted, groups, change in moves[:3]:
            if predicted >= 0:
                break
            trial = {**widths, **change}
            got = damage(trial)
            if got < current - 1e-9:
                log.moves.append({"groups": list(groups), "widths": change, "damage": got})
                widths, current, taken = trial, got, True
                break
        if not taken:
            break
    log.evaluations = getattr(damage, "evaluations", 0)
    log.seconds = time.perf_counter() - began
    return widths
