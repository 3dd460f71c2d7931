"""Budgets over a whole network: what a choice of group widths costs, and the widths for a target.

`WidthCost` is built once from the uncompressed model: every parameter tensor and every conv or
linear's MACs (by torch's FlopCounter, per module) with the channel groups its input and output
dimensions belong to. A conv's MACs and weights scale with (kept inputs / inputs) x (kept outputs /
outputs), a BN's or bias's with its one group's share, so the cost of any widths is exact without
building the model (tests compare it with the merged model's own FlopCounter count).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
import torch.nn as nn

from ..grouping.module import PermutedGroupedConv
from ..surgery.groups import ChannelGroup

Target = Literal["params", "macs"]


@dataclass
class _Dim:
    """One dimension of a tensor: `width` entries, of which `parts[g]` belong to group g (the rest
    fixed). A DenseNet layer's input, a concat, spans several groups."""

    width: int
    parts: dict[str, int] = field(default_factory=dict)

    def share(self, kept: dict[str, int], channels: dict[str, int]) -> float:
        fixed = self.width - sum(self.parts.values())
        return (fixed + sum(n * kept.get(g, channels[g]) / channels[g] for g, n in self.parts.items())) / self.width


@dataclass
class _Term:
    value: float  # parameters or MACs of this tensor / layer in the uncompressed model
    dims: tuple[_Dim, ...]  # the dimensions that shrink with the groups (output, then input)


@dataclass
class WidthCost:
    """Parameters and MACs as functions of the kept channels per group (root -> count)."""

    channels: dict[str, int]
    params: list[_Term] = field(default_factory=list)
    macs: list[_Term] = field(default_factory=list)

    def _total(self, terms: list[_Term], kept: dict[str, int]) -> float:
        total = 0.0
        for t in terms:
            scale = 1.0
            for d in t.dims:
                scale *= d.share(kept, self.channels)
            total += t.value * scale
        return total

    def cost(self, kept: dict[str, int]) -> dict[str, float]:
        """{'params': ..., 'macs': ...} of the model with `kept` channels per group (others full)."""
        return {"params": self._total(self.params, kept), "macs": self._total(self.macs, kept)}

    @property
    def full(self) -> dict[str, float]:
        return self.cost({})


def _module_dims(module: nn.Module, path: str, groups: Sequence[ChannelGroup],
                 owner: nn.Module | None = None) -> tuple[_Dim | None, _Dim | None]:
    """(output dimension, input dimension) of a layer with the groups' shares of each.

    `owner`: the PermutedGroupedConv (achroma group) that the conv at `path` (the owner's path
    then) lies inside; the groups reach the owner, in the original channel order. Its convs are
    scaled by the owner's shares: exact while its groups shrink in proportion, else an estimate.
    """
    widths = {"out": None, "in": None}
    if owner is not None:
        widths = {"out": owner.out_channels, "in": owner.in_channels}
    elif isinstance(module, nn.Conv2d):
        widths = {"out": module.out_channels, "in": module.in_channels}
    elif isinstance(module, nn.Linear):
        widths = {"out": module.out_features, "in": module.in_features}
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        widths = {"out": module.num_features, "in": None}
    dims = {k: (_Dim(w) if w else None) for k, w in widths.items()}
    for g in groups:
        for use in g.uses:
            if use.path != path:
                continue
            dim = dims["out" if use.role == "producer" else "in"]
            if dim is not None:
                dim.parts[g.root] = dim.parts.get(g.root, 0) + sum(len(v) for v in use.index.values())
    return dims["out"], dims["in"]


def _scaling(module: nn.Module, out_dim: _Dim | None, in_dim: _Dim | None, ndim: int) -> tuple[_Dim, ...]:
    """The dimensions a tensor (or a layer's MACs, ndim 2) scales with."""
    depthwise = isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
    dims = (out_dim,) if ndim <= 1 or depthwise else (out_dim, in_dim)
    return tuple(d for d in dims if d is not None and d.parts)


def width_cost(model: nn.Module, groups: Sequence[ChannelGroup], input_shape: tuple[int, int, int]) -> WidthCost:
    """The cost model of `model` (uncompressed) over `groups` for inputs of `input_shape`."""
    from ..report.costs import run_flop_counter

    usable = [g for g in groups if g.refused is None]
    wc = WidthCost({g.root: g.channels for g in usable})
    counter = run_flop_counter(model, input_shape)
    root = type(model).__name__  # FlopCounterMode names modules '<root class>.<path>'
    per_module = {k[len(root) + 1:]: v for k, v in counter.get_flop_counts().items() if k.startswith(root + ".")}
    owners = {f"{path}.{name}": (path, m) for path, m in model.named_modules() if isinstance(m, PermutedGroupedConv)
              for name, _ in m.named_modules() if name}
    for path, module in model.named_modules():
        if path in owners:  # a conv inside a grouped pointwise conv: the groups reach the owner
            out_dim, in_dim = _module_dims(module, owners[path][0], usable, owners[path][1])
        else:
            out_dim, in_dim = _module_dims(module, path, usable)
        for t in module.parameters(recurse=False):
            wc.params.append(_Term(float(t.numel()), _scaling(module, out_dim, in_dim, t.ndim)))
        if isinstance(module, (nn.Conv2d, nn.Linear)) and path in per_module:
            wc.macs.append(_Term(sum(per_module[path].values()) / 2, _scaling(module, out_dim, in_dim, 2)))
    return wc


def _rounded(w: int, n: int, round_to: int) -> int:
    """`w` of a group's `n` channels rounded down to a multiple of `round_to` (at least one multiple)
    when the group is merged and has at least `round_to` channels; a group kept whole keeps `n`."""
    if w >= n:
        return n
    if round_to > 1 and n >= round_to:
        return max(round_to, w // round_to * round_to)
    return max(1, w)


def round_widths(widths: dict[str, int], channels: dict[str, int], round_to: int) -> dict[str, int]:
    """Every merged group's width rounded down to a multiple of `round_to` (see `_rounded`): the cost
    can only fall, so a budget met before is met after."""
    _check_round_to(round_to)
    return {g: _rounded(w, channels[g], round_to) for g, w in widths.items()}


def _check_round_to(round_to: int) -> None:
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive integer (1: no rounding); got {round_to!r}")


def uniform_widths(cost: WidthCost, target: float, by: Target = "macs", skip: Sequence[str] = (),
                   round_to: int = 1) -> dict[str, int]:
    """Kept channels per group, the same share k for every group not in `skip`, with k as large as
    keeps the cost at or below `target` x the full cost (bisection; at least one channel a group).

    `round_to` N > 1: every merged group with at least N channels keeps a multiple of N (vector
    widths: 8 or 16 floats a register), the largest share k whose rounded widths meet the target.
    """
    if not 0 < target <= 1:
        raise ValueError(f"target must be a share in (0, 1]; got {target}")
    _check_round_to(round_to)
    goal = target * cost.full[by]

    def widths(k: float) -> dict[str, int]:
        return {g: (n if g in skip else _rounded(int(k * n), n, round_to)) for g, n in cost.channels.items()}

    if cost.cost(widths(1.0))[by] <= goal:
        return widths(1.0)
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if cost.cost(widths(mid))[by] <= goal:
            lo = mid
        else:
            hi = mid
    found = widths(lo)
    if cost.cost(found)[by] > goal:
        raise ValueError(f"no uniform share reaches {target:.0%} of the {by}: the groups left out by skip, or "
                         "layers outside every group, cost more than that"
                         + (f" (with widths in multiples of {round_to}, a merged group keeps at least {round_to})"
                            if round_to > 1 else ""))
    return found


@dataclass
class BudgetPlan:
    """What a budget asks of each group: the layers to merge (group roots) and the share each keeps."""

    layers: list[str]
    keep: list[float]
    widths: dict[str, int]
    predicted: dict[str, float]  # params and MACs of the folded gray model at these widths
    full: dict[str, float]  # ... and uncompressed
    skipped: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict:
        return {"layers": self.layers, "keep": self.keep, "widths": self.widths, "predicted": self.predicted,
                "full": self.full, "skipped": self.skipped, "refused": self.refused}


def plan_budget(color_model: nn.Module, normalization, target: float, by: Target = "macs",
                skip: Sequence[str] = (), size: int = 32, allocation: str = "uniform",
                calibration: torch.Tensor | None = None, round_to: int = 1) -> BudgetPlan:
    """Widths for every channel group of the folded gray model so that `by` is at most `target` of
    the uncompressed gray model's, the same share kept in every group (uniform allocation).

    `skip` names groups to leave whole (by any conv that writes them, e.g. 'conv1' for a ResNet's
    first stream). allocation: 'uniform' (the same share everywhere) or 'sensitivity' (see
    `allocation`; needs `calibration`, a raw gray image batch). Returns the layers (group roots) and
    per-layer keep shares for `compress`. `round_to` N > 1: every merged group's width a multiple
    of N where the group has at least N channels (uniform: the largest share that still meets the
    target; sensitivity: its widths rounded down, so the cost only falls).
    """
    from ..fold import fold_to_gray
    from ..surgery.groups import channel_groups

    gray, _ = fold_to_gray(color_model, normalization)
    p = next(gray.parameters())
    groups = channel_groups(gray, torch.zeros(1, 1, size, size, dtype=p.dtype, device=p.device))
    refused = {g.root: g.refused for g in groups if g.refused}
    writers = {w: g.root for g in groups for w in g.writers}
    unknown = [s for s in skip if s not in writers]
    if unknown:
        raise ValueError(f"--skip {', '.join(unknown)}: not a conv that writes a channel group; "
                         f"groups: {', '.join(g.root for g in groups)}")
    skipped = sorted({writers[s] for s in skip})
    _check_round_to(round_to)
    cost = width_cost(gray, groups, (1, size, size))
    if allocation == "uniform":
        widths = uniform_widths(cost, target, by, skip=skipped, round_to=round_to)
    elif allocation == "sensitivity":
        from .allocation import measure_sensitivity, sensitivity_widths

        if calibration is None:
            raise ValueError("the sensitivity allocation needs calibration images")
        roots = [g for g in cost.channels if g not in skipped]
        sens = measure_sensitivity(gray, roots, calibration.to(p.device, p.dtype))
        widths = round_widths(sensitivity_widths(cost, target, sens, by, skip=skipped), cost.channels, round_to)
    else:
        raise ValueError(f"unknown allocation {allocation!r}; choose uniform or sensitivity")
    layers = [g for g, n in widths.items() if n < cost.channels[g]]
    return BudgetPlan(layers, [widths[g] / cost.channels[g] for g in layers], widths, cost.cost(widths), cost.full,
                      skipped, refused)
