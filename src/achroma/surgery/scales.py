"""Per-channel scales that make merging scale-consistent: members equal up to BN scaling merge exactly.

A conv followed by BatchNorm computes the same function for filters w and s*w (s > 0) when the
BN's statistics scale with them (mean s*mu, std s*sigma). Averaging weight, bias, mean and var
separately would not see that: the mean of w and 2w is 1.5w, but the mean of sigma and 2 sigma
over the mean of the mu's does not normalize it back. So each member c of a cluster is first
brought to a common scale r_c (the std of the BN that normalizes it: sigma_c = sqrt(var_c + eps)),
averaged there, and the merged channel is given back the cluster's mean scale r_m. The rules
(`merge_linear`, `merge_consumer`, `merge_batchnorm`) make the merged channel's output the mean of
the members' outputs whenever the members agree after that normalization, which is exact for
duplicates and for duplicates up to a positive scale.

Which scale applies where is read off the dependency graph: a BN reads the output of the nearest
conv/linear producer behind it through parameter-free ops that keep a positive scale (ReLU,
pooling, concat, split, reshape); an addition of two branches ends the search (the sum of two
differently scaled branches has no one scale).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from .graph import ChannelUse

_PASS_THROUGH = {tp.ops.OPTYPE.ELEMENTWISE, tp.ops.OPTYPE.CONCAT, tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.RESHAPE,
                 tp.ops.OPTYPE.SLICE, tp.ops.OPTYPE.UNBIND, tp.ops.OPTYPE.EXPAND}


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _source(dg: tp.DependencyGraph, module: nn.Module, producers: set[nn.Module]) -> nn.Module | None:
    """The one linear producer whose output `module` reads through scale-keeping ops, else None."""
    node = dg.module2node.get(module)
    if node is None:
        return None
    found: set[nn.Module] = set()
    seen: set[int] = set()
    stack = list(node.inputs)
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if n.module in producers:
            found.add(n.module)
            continue
        if n.type not in _PASS_THROUGH or (n.type == tp.ops.OPTYPE.ELEMENTWISE and len(n.inputs) > 1):
            if n.type == tp.ops.OPTYPE.ELEMENTWISE and len(n.inputs) > 1:
                return None  # a sum (or product) of branches: no single scale
            continue  # another parameterized layer (a BN, a conv outside the group): not our channel's source
        stack.extend(n.inputs)
    return found.pop() if len(found) == 1 else None


def channel_scales(dg: tp.DependencyGraph, uses: list[ChannelUse], modules: dict[str, nn.Module]
                   ) -> tuple[dict[str, dict[int, torch.Tensor]], dict[str, str]]:
    """(scale per root channel of each linear producer, path of the producer each use reads from).

    A linear producer (conv, linear, channel map; not a BN) gets scales from the first BN that
    reads it directly; without such a BN it has none (plain averaging). Returns only what applies.
    """
    linear = {modules[u.path]: u for u in uses if u.role == "producer" and not is_batchnorm(modules[u.path])}
    reads: dict[str, str] = {}
    scales: dict[str, dict[int, torch.Tensor]] = {}
    for use in uses:
        module = modules[use.path]
        if use.role == "producer" and not is_batchnorm(module):
            continue
        src = _source(dg, module, set(linear))
        if src is None:
            continue
        src_use = linear[src]
        if is_batchnorm(module) and module.running_var is not None:  # the first BN to see a channel sets it
            std = torch.sqrt(module.running_var.detach().double() + module.eps)
            per_root = scales.setdefault(src_use.path, {})
            for root, slots in use.index.items():
                per_root.setdefault(root, std[slots[0]])  # 0-d tensors
        reads[use.path] = src_use.path
    return scales, {k: v for k, v in reads.items() if v in scales}


def _stack(t: torch.Tensor, axis: int, slots: list[list[int]]) -> torch.Tensor:
    """(members, ...) float64 view of `t`'s entries at each member's slots along `axis`."""
    idx = torch.tensor(slots, device=t.device)
    picked = t.detach().index_select(axis, idx.flatten()).double()  # pick, then widen: not the whole tensor
    shape = list(picked.shape)
    shape[axis: axis + 1] = list(idx.shape)
    return picked.reshape(shape).movedim(axis, 0)


def _ratio(r: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Member scales as a float64 (members, 1, ..., 1) tensor broadcasting against `like`."""
    return r.to(dtype=torch.float64, device=like.device).view(-1, *([1] * (like.ndim - 1)))


def member_scales(scale: dict[int, torch.Tensor] | None, members: list[int], like: torch.Tensor) -> torch.Tensor:
    """(members,) float64 scales r_c on `like`'s device: from `scale`, or all 1 without one."""
    if scale is None or any(m not in scale for m in members):  # no BN normalizes these members: plain mean
        return torch.ones(len(members), dtype=torch.float64, device=like.device)
    return torch.stack([scale[m] for m in members]).to(dtype=torch.float64, device=like.device)


def merge_linear(t: torch.Tensor, axis: int, slots: list[list[int]], r: torch.Tensor) -> torch.Tensor:
    """A producer's per-channel tensor (weight rows, bias, border kernel, map rows): r_m * mean(t_c / r_c)."""
    x = _stack(t, axis, slots)
    rr = _ratio(r, x)
    return (x / rr).mean(0) * rr.mean()


def merge_consumer(t: torch.Tensor, axis: int, slots: list[list[int]], r: torch.Tensor) -> torch.Tensor:
    """A consumer's input slices: sum_c W_c * r_c / r_m (it reads the merged channel, scaled r_m)."""
    x = _stack(t, axis, slots)
    rr = _ratio(r, x)
    return (x * rr / rr.mean()).sum(0)


def merge_batchnorm(bn: nn.modules.batchnorm._BatchNorm, slots: list[int], r: torch.Tensor) -> dict[str, Any]:
    """Merged (weight, bias, running_mean, running_var) of one cluster of a BN's channels (0-d tensors):
    `merge_batchnorm_clusters` for one cluster."""
    return {k: v[0] for k, v in merge_batchnorm_clusters(bn, [slots], r).items()}


def merge_batchnorm_clusters(bn: nn.modules.batchnorm._BatchNorm, clusters: list[list[int]], r: torch.Tensor
                             ) -> dict[str, torch.Tensor]:
    """Merged (weight, bias, running_mean, running_var) of several clusters of a BN's channels at once:
    one float64 value per cluster. `r`: the members' scales, in the order of the concatenated clusters.

    Member c maps x to gamma_c (x - mu_c) / sigma_c + beta_c = alpha_c x/r_c + off_c. The merged
    entry maps the merged input x_m = r_m mean(x_c / r_c) to mean_c(alpha_c) x_m / r_m + mean_c(off_c):
    the mean of the members' outputs when they agree on x_c / r_c.
    """
    device = bn.weight.device if bn.weight is not None else bn.running_var.device
    i = torch.tensor([s for c in clusters for s in c], device=device)
    seg = torch.tensor([k for k, c in enumerate(clusters) for _ in c], device=device)
    sizes = torch.tensor([len(c) for c in clusters], dtype=torch.float64, device=device)

    def mean(v: torch.Tensor) -> torch.Tensor:  # per cluster
        return torch.zeros(len(clusters), dtype=torch.float64, device=device).index_add_(0, seg, v) / sizes

    out: dict[str, Any] = {}
    if bn.running_var is None:  # batch statistics in eval too: only the affine can be merged
        if bn.affine:
            out["weight"] = mean(bn.weight.detach().double()[i])
            out["bias"] = mean(bn.bias.detach().double()[i])
        return out
    rr = r.to(dtype=torch.float64, device=device).reshape(-1)
    mu = bn.running_mean.detach().double()[i]
    sigma = torch.sqrt(bn.running_var.detach().double()[i] + bn.eps)
    gamma = bn.weight.detach().double()[i] if bn.affine else torch.ones_like(mu)
    beta = bn.bias.detach().double()[i] if bn.affine else torch.zeros_like(mu)
    alpha = mean(gamma * rr / sigma)
    offset = mean(beta - gamma * mu / sigma)
    r_m = mean(rr)
    if bn.affine:
        sigma_m = r_m * mean(sigma / rr)
        mu_m = r_m * mean(mu / rr)
        gamma_m = alpha * sigma_m / r_m
        out.update(weight=gamma_m, bias=offset + gamma_m * mu_m / sigma_m)
    else:  # gamma = 1, beta = 0 fixed: carry alpha and the offset in the statistics
        sigma_m = r_m / alpha
        mu_m = -offset * sigma_m
    out["running_mean"] = mu_m
    out["running_var"] = (sigma_m ** 2 - bn.eps).clamp_min(0.0)
    return out
