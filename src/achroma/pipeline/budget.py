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

import torch.nn as nn

from ..grouping.module import PermutedGroupedConv
from ..surgery.groups import ChannelGroup

Target = Literal["params", "macs"]
ALLOCATIONS = ("uniform", "sensitivity", "search")


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
    """Parameters and MACs as functions of the kept channels per group (root -> count).

    limits[g] = (step, max_removed) from the group's constraints (`ChannelGroup`): a group loses
    channels in multiples of step, at most max_removed (None: all but one). `allowed` applies them,
    so that no plan asks the merge for a width it must refuse or round.
    """

    channels: dict[str, int]
    params: list[_Term] = field(default_factory=list)
    macs: list[_Term] = field(default_factory=list)
    limits: dict[str, tuple[int, int | None]] = field(default_factory=dict)

    def allowed(self, g: str, width: int) -> int:
        """The smallest width >= `width` (and >= 1) that group g can be merged to."""
        n = self.channels[g]
        step, most = self.limits.get(g, (1, None))
        most = n - 1 if most is None else most
        removed = min(max(0, n - max(1, width)), most)
        return n - removed // step * step

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
    from ..costs import run_flop_counter

    usable = [g for g in groups if g.refused is None]
    wc = WidthCost({g.root: g.channels for g in usable},
                   limits={g.root: (g.step, g.max_removed) for g in usable})
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


def uniform_widths(cost: WidthCost, target: float | dict[str, float], by: Target = "macs",
                   skip: Sequence[str] = (), round_to: int = 1) -> dict[str, int]:
    """Kept channels per group, the same share k for every group not in `skip`, with k as large as
    keeps the cost at or below `target` x the full cost (bisection; at least one channel a group;
    each width raised to one the group allows, `WidthCost.allowed`). `target` may be a dict
    {'macs': 0.5, 'params': 0.5}: every budget is met. `round_to` N > 1: every merged group with at
    least N channels keeps a multiple of N (vector widths: 8 or 16 floats a register), the largest
    share k whose rounded widths meet the target."""
    _check_round_to(round_to)
    goals = dict(target) if isinstance(target, dict) else {by: target}
    for what, share in goals.items():
        if what not in ("macs", "params"):
            raise ValueError(f"unknown budget {what!r}; budgets are 'macs' and 'params'")
        if not 0 < share <= 1:
            raise ValueError(f"target must be a share in (0, 1]; got {share}")

    def widths(k: float) -> dict[str, int]:
        return {g: (n if g in skip else cost.allowed(g, _rounded(int(k * n), n, round_to)))
                for g, n in cost.channels.items()}

    def fits(w: dict[str, int]) -> bool:
        got = cost.cost(w)
        return all(got[what] <= share * cost.full[what] * (1 + 1e-12) for what, share in goals.items())

    if fits(widths(1.0)):
        return widths(1.0)
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if fits(widths(mid)):
            lo = mid
        else:
            hi = mid
    found = widths(lo)
    if not fits(found):
        names = " and ".join(f"{share:.0%} of the {what}" for what, share in goals.items())
        raise ValueError(f"no uniform share reaches {names}: the groups left out by skip, the groups that cannot "
                         "shrink (grouped convs, fixed splits), or layers outside every group cost more than that"
                         + (f" (with widths in multiples of {round_to}, a merged group keeps at least {round_to})"
                            if round_to > 1 else ""))
    return found


@dataclass(frozen=True)
class Budget:
    """A whole-network budget: the share of the folded model's MACs and/or parameters to keep.

    skip: groups to leave whole, named by any conv that writes them ('conv1' for a ResNet's first
    stream). allocation: 'uniform' (the same share in every group) or 'sensitivity' (shares by each
    group's measured sensitivity; needs calibration images). round_to: every merged group's width a
    multiple of N where the group has at least N channels (8 or 16: hardware-friendly widths).
    """

    macs: float | None = None
    params: float | None = None
    skip: tuple[str, ...] = ()
    allocation: str = "uniform"
    round_to: int = 1

    def __post_init__(self) -> None:
        if self.macs is None and self.params is None:
            raise ValueError("a budget needs macs and/or params (the share to keep, e.g. 0.5)")
        for what in ("macs", "params"):
            share = getattr(self, what)
            if share is not None and not 0 < share <= 1:
                raise ValueError(f"budget {what} must be a share in (0, 1]; got {share}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"unknown allocation {self.allocation!r}; choose {', '.join(ALLOCATIONS)}")
        _check_round_to(self.round_to)
        object.__setattr__(self, "skip", tuple(self.skip))

    @property
    def goals(self) -> dict[str, float]:
        return {k: v for k, v in (("macs", self.macs), ("params", self.params)) if v is not None}

    def to_dict(self) -> dict:
        return {"macs": self.macs, "params": self.params, "skip": list(self.skip), "allocation": self.allocation,
                "round_to": self.round_to}


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
    search: dict | None = None  # the search allocation's log (damage at the start and after each move, seconds)

    def summary(self) -> dict:
        return {"layers": self.layers, "keep": self.keep, "widths": self.widths, "predicted": self.predicted,
                "full": self.full, "skipped": self.skipped, "refused": self.refused,
                **({"search": self.search} if self.search is not None else {})}
