"""Least-squares refit: after a merge, give each layer that reads merged channels the weights that
best reproduce what the uncompressed model computes there, on a few thousand images. No training.

Averaging filters that are not exact duplicates shrinks and shifts what the merged channel carries,
and the error compounds with depth. The consumer's input slices (summed over each cluster) are only
a first guess. With X the consumer's input patches in the merged model and Y its output in the
uncompressed gray model on the same images, the refit solves the ridge regression
    min_W ||X W - (Y - b)||^2 + lam ||W||^2,   lam = ridge * trace(X^T X) / dim
in closed form (ThiNet, Luo et al. ICCV 2017, and Neuron Merging, Kim et al. NeurIPS 2020, for the
idea). The consumer's BatchNorm and everything after it are unchanged: matching the conv's output
before its BN is matching what the BN normalizes. Layers are refit in forward order, each on inputs
produced by the layers already refit, so corrections do not pile up.

Layers whose *outputs* were merged are refit too when the merge is known (`merges`: each group's
clusters) and a BatchNorm reads them: the target of merged channel j is the mean of its members'
BN outputs in the uncompressed model (what the merge's averaging aims at, free of each member's
scale), taken back through the merged BN to the conv's output. In a whole-network merge, where
almost every conv both reads and writes merged channels, this is what lets the refit reach them.

`ridge='auto'` chooses each layer's ridge from `RIDGE_GRID` on held-out calibration images: every
`HOLDOUT_EVERY`-th image is left out of the fit, the grid's value with the least relative error on
those images wins, and the layer is then solved on all the images with it (`RefitReport.ridges`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..fold.border import BorderCorrectedConv2d
from ..models.inspect import _StopForward, conv_forward_order

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
Merges = Mapping[str, tuple[Sequence[int], Sequence[int]]]  # a conv of the group -> (labels, representatives)
DEFAULT_RIDGE = 1e-4
RIDGE_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # ridge='auto' picks from these, per layer
HOLDOUT_EVERY = 5  # ridge='auto': every 5th calibration image scores the grid (a fifth held out)


@dataclass
class RefitReport:
    """Per refit layer: relative output error before and after (on the calibration images)."""

    layers: list[str] = field(default_factory=list)
    error_before: list[float] = field(default_factory=list)
    error_after: list[float] = field(default_factory=list)
    images: int = 0
    ridges: list[float] = field(default_factory=list)  # the ridge each layer was solved with


def changed_consumers(model: nn.Module, reference: nn.Module, size: int = 32) -> list[str]:
    """Convs and linears (groups=1) whose input width differs from the reference's, outputs equal,
    in forward order: the layers that read merged channels and can be refit against the reference."""
    ref = dict(reference.named_modules())
    out = []
    order = conv_forward_order(model, size)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for path in order + linears:
        m, r = model.get_submodule(path), ref.get(path)
        if type(r) is not type(m) and not (isinstance(m, nn.Conv2d) and isinstance(r, nn.Conv2d)):
            continue
        if isinstance(m, nn.Conv2d):
            same_out = m.out_channels == r.out_channels and m.groups == 1 and r.groups == 1
            if same_out and m.in_channels != r.in_channels and m.padding_mode == "zeros":
                out.append(path)
        elif isinstance(m, nn.Linear) and m.out_features == r.out_features and m.in_features != r.in_features:
            out.append(path)
    return out


def _design(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Rows of the regression: (samples, in_features) for a linear, patches (N*L, C*k*k) for a conv."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    pad = module.padding
    if isinstance(pad, str):
        raise ValueError(f"ls-refit: string padding {pad!r} is not supported")
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=pad, stride=module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _targets(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """(rows, outputs) matching `_design`, the bias taken off (it stays as it is)."""
    if module.bias is not None:
        y = y - module.bias.view(1, -1, *([1] * (y.ndim - 2)))
    if isinstance(module, nn.Linear):
        return y.reshape(-1, y.shape[-1])
    return y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])


@torch.no_grad()
def _capture(model: nn.Module, path: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) of `path` on batch x; the forward pass stops there."""
    seen: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen["in"], seen["out"] = inputs[0], output
        raise _StopForward

    handle = model.get_submodule(path).register_forward_hook(hook)
    try:
        model(x)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return seen["in"], seen["out"]


@dataclass
class _ProducerTarget:
    """How a conv whose output channels were merged is refit: through the BN that reads it."""

    bn: str
    members: list[list[int]]  # per merged output channel, the reference channels it stands for


def merged_producers(model: nn.Module, reference: nn.Module, merges: Merges, example: torch.Tensor,
                     ) -> dict[str, _ProducerTarget]:
    """Convs (groups=1) of `model` whose outputs are a merged group, each read by exactly one BN.

    `merges` names each merged group by any conv that writes it (compress names its root); the
    group's writers come from the reference's channel_groups. Merged channel j is the cluster with the j-th smallest representative (pruning keeps
    representatives in order).
    """
    from ..surgery.groups import channel_groups

    groups = {w: g for g in channel_groups(reference, example.to(next(reference.parameters()).dtype))
              for w in g.writers}
    readers = _bn_readers(model, example.to(next(model.parameters()).dtype))
    out = {}
    for layer, (labels, reps) in merges.items():
        group = groups.get(layer)
        if group is None:
            continue
        labels = list(labels)
        members = [[i for i, lab in enumerate(labels) if lab == labels[r]] for r in sorted(reps)]
        for path in group.writers:
            m = model.get_submodule(path)
            plain = isinstance(m, nn.Conv2d) and type(m).forward is nn.Conv2d.forward  # not the fold's border conv
            if not plain or m.groups != 1 or path not in readers:
                continue
            if m.out_channels != len(members) or reference.get_submodule(path).out_channels != len(labels):
                continue
            bn, ref_bn = model.get_submodule(readers[path]), reference.get_submodule(readers[path])
            if bn.num_features != len(members) or ref_bn.num_features != len(labels):
                continue  # the BN reads more than this conv's output (e.g. a concat): no per-channel target
            out[path] = _ProducerTarget(readers[path], members)
    return out


@torch.no_grad()
def _bn_readers(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """conv path -> path of the BatchNorm2d that takes that conv's output tensor as its input."""
    outputs: dict[int, tuple[str, torch.Tensor]] = {}  # the tensors are kept alive, so no id is reused
    found: dict[str, str] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(
                lambda _m, _i, o, name=name: outputs.__setitem__(id(o), (name, o))))
        elif isinstance(m, nn.BatchNorm2d):
            def pre(_m: nn.Module, inputs: tuple, name: str = name) -> None:
                conv = outputs.get(id(inputs[0]))
                if conv is not None and conv[1] is inputs[0]:
                    found[conv[0]] = name
            handles.append(m.register_forward_pre_hook(pre))
    try:
        model.eval()(example)
    finally:
        for h in handles:
            h.remove()
    return found


def _through_bn(bn: nn.BatchNorm2d, t: torch.Tensor) -> torch.Tensor:
    """The BN input z with bn(z) = t, channel-wise (the merged BN's own statistics and affine map)."""
    shape = (1, -1, 1, 1)
    std = (bn.running_var.double() + bn.eps).sqrt().view(shape)
    gamma = bn.weight.double().view(shape) if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.double().view(shape) if bn.bias is not None else torch.zeros_like(std)
    gamma = torch.where(gamma.abs() < 1e-6, torch.full_like(gamma, 1e-6), gamma)
    return (t - beta) / gamma * std + bn.running_mean.double().view(shape)


@torch.no_grad()
def ls_refit(model: nn.Module, reference: nn.Module, batches: Batches, layers: list[str] | None = None,
             ridge: float | str = DEFAULT_RIDGE, size: int = 32, merges: Merges | None = None) -> RefitReport:
    """Refit `layers` of `model` in place (default `changed_consumers`, plus, with `merges`, the convs
    whose outputs were merged: `merged_producers`) to match `reference`'s outputs.

    `batches` yields (images, labels) the two models take (raw gray for folded models); it is read
    once and kept (a few thousand images). Both models are used in eval mode. Under torchrun every
    process reads its share of the images (every world_size-th) and X^T X, X^T Y are summed over the
    processes before each solve, so every process writes the same weights.
    """
    from ..training.distributed import current

    check_ridge(ridge)
    images = torch.cat([x for x, _ in batches])
    info = current()
    total = len(images)
    model.eval()
    reference.eval()
    producers = merged_producers(model, reference, merges, images[:1]) if merges else {}
    if layers is None:
        consumers = set(changed_consumers(model, reference, size))
        order = conv_forward_order(model, size) + [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        layers = [p for p in order if p in consumers or p in producers]
    report = RefitReport(images=total)
    if info.world_size > 1:
        images = images[info.rank::info.world_size]
    for path in layers:
        _refit_layer(model, reference, path, images, ridge, producers.get(path), report)
    return report


def check_ridge(ridge: float | str) -> None:
    if ridge == "auto":
        return
    if isinstance(ridge, str) or isinstance(ridge, bool) or not ridge >= 0:
        raise ValueError(f"ridge must be a number >= 0 or 'auto'; got {ridge!r}")


def _refit_layer(model: nn.Module, reference: nn.Module, path: str, images: torch.Tensor, ridge: float | str,
                 producer: _ProducerTarget | None, report: RefitReport) -> None:
    """Accumulate X^T X, X^T Y over the images, solve the ridge problem, write the weights."""
    from ..training.distributed import all_reduce_sum

    w = model.get_submodule(path).weight
    held = torch.arange(len(images)) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    if ridge == "auto":  # the grams of the fitted and the held-out images, kept apart to score the grid
        fit, out = _grams(model, reference, path, images[~held], producer), \
            _grams(model, reference, path, images[held], producer)
        all_reduce_sum(*fit, *out)  # the other processes' images (a no-op for one process)
        ridge = choose_ridge(fit, out)
        xtx, xty, yty = (a + b for a, b in zip(fit, out))
    else:
        xtx, xty, yty = _grams(model, reference, path, images, producer)
        all_reduce_sum(xtx, xty, yty)
    old = w.detach().double().reshape(w.shape[0], -1).T
    new = _solve(xtx, xty, ridge)
    report.layers.append(path)  # relative residual ||XW - Y|| / ||Y||, before and after
    report.error_before.append(_rel_error(xtx, xty, yty, old))
    report.error_after.append(_rel_error(xtx, xty, yty, new))
    report.ridges.append(float(ridge))
    w.copy_(new.T.reshape(w.shape).to(w.dtype))


def choose_ridge(fit: tuple[torch.Tensor, ...], held: tuple[torch.Tensor, ...]) -> float:
    """The `RIDGE_GRID` value whose solution on the `fit` grams (X^T X, X^T Y, Y^T Y) has the least
    relative error on the `held` grams; `DEFAULT_RIDGE` when nothing was held out."""
    if not held[2] > 0:
        return DEFAULT_RIDGE
    errors = [_rel_error(*held, _solve(fit[0], fit[1], r)) for r in RIDGE_GRID]
    return RIDGE_GRID[min(range(len(RIDGE_GRID)), key=errors.__getitem__)]


def _solve(xtx: torch.Tensor, xty: torch.Tensor, ridge: float) -> torch.Tensor:
    dim = len(xtx)
    lam = (ridge * torch.trace(xtx) / dim).clamp_min(1e-12)  # inputs all zero: still solvable (W = 0)
    return torch.linalg.solve(xtx + lam * torch.eye(dim, dtype=xtx.dtype, device=xtx.device), xty)


def _grams(model: nn.Module, reference: nn.Module, path: str, images: torch.Tensor,
           producer: _ProducerTarget | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """X^T X, X^T Y and Y^T Y of layer `path` over `images` (X: its inputs in `model`; Y: its target)."""
    module = model.get_submodule(path)
    w = module.weight
    dim = w[0].numel()
    xtx = torch.zeros(dim, dim, dtype=torch.float64, device=w.device)
    xty = torch.zeros(dim, w.shape[0], dtype=torch.float64, device=w.device)
    yty = torch.zeros((), dtype=torch.float64, device=w.device)
    for chunk in images.split(64):
        x_in, _ = _capture(model, path, chunk)
        if producer is None:
            _, y_ref = _capture(reference, path, chunk)
        else:  # the members' mean BN output, back through the merged BN
            _, bn_out = _capture(reference, producer.bn, chunk)
            bn_out = bn_out.double()
            t = torch.stack([bn_out[:, m].mean(1) for m in producer.members], 1)
            y_ref = _through_bn(model.get_submodule(producer.bn), t)
        if isinstance(module, BorderCorrectedConv2d):  # the fixed border map is not the weights' to reproduce
            y_ref = y_ref - module.border_correction(x_in)
        a, b = _design(module, x_in.double()), _targets(module, y_ref.double())
        xtx += a.T @ a
        xty += a.T @ b
        yty += b.pow(2).sum()
    return xtx, xty, yty


def _rel_error(xtx: torch.Tensor, xty: torch.Tensor, yty: torch.Tensor, w: torch.Tensor) -> float:
    resid = yty - 2 * (w * xty).sum() + (w * (xtx @ w)).sum()
    return float((resid.clamp_min(0) / yty.clamp_min(1e-30)).sqrt())
