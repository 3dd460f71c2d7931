"""Receptive fields by gradient ascent in input space, all filters of a layer in one batch.

The notebook's recipe, per filter: start from `rand * 20 + 128` in 0..255 pixel space, climb the
mean activation of the filter with the gradient RMS-normalized (g / (sqrt(mean(g^2)) + 1e-5)),
step 0.5, 100 steps. Here image i of a batch climbs filter i; in eval mode the images do not
interact, so the batch gives each filter exactly its one-at-a-time result. The ascent runs in
pixel space and pixels reach the model through its normalization, (x / 255 - mean) / std, so the
recipe is the notebook's whatever the model's input normalization. The forward pass stops at the
layer, and the layer's own gradient is a constant map (see `objectives._Objective`). Options of
`compute_receptive_fields` add Lucid/Lucent's variants (where the filter is read, centre unit,
jitter, Fourier parameterization); their defaults are this recipe, bit for bit.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from ..progress import progress as progress_bar

from ..data import Normalization, get_normalization
from ..models.inspect import input_channels, resolve_conv, resolve_layer_name
from .objectives import POINTS, REDUCTIONS, _Objective, make_objective
from .parameterization import PARAMETERIZATIONS, image_space, jitter_shifts, roll_images
from .result import ReceptiveFields


def initial_images(seed: int, restart: int, filters: Sequence[int], channels: int, size: int) -> np.ndarray:
    """Start images `rand * 20 + 128`, one per filter, each from its own stream (seed, restart, filter).

    Seeding per filter makes a filter's start (hence its field) independent of which other
    filters share its batch.
    """
    return np.stack([np.random.default_rng([seed, restart, f]).random((channels, size, size)) * 20.0 + 128.0
                     for f in filters])


def _climb(objective: _Objective, x: torch.Tensor, filters: torch.Tensor, to_input: Normalization,
           steps: int, step_size: float, bar: Any, *, parameterization: str = "pixel",
           shifts: np.ndarray | None = None) -> torch.Tensor:
    """`steps` RMS-normalized ascent steps from pixel images `x`; image b climbs channel filters[b].

    The step moves the parameters of `parameterization` (the pixels, or the scaled spectrum);
    shifts (steps, B, 2): per-step rolls of each image before the forward pass (jitter), or None.
    """
    shape = (1, -1, 1, 1)
    mean = torch.tensor(to_input.mean, dtype=x.dtype, device=x.device).view(shape)
    std = torch.tensor(to_input.std, dtype=x.dtype, device=x.device).view(shape)
    space = image_space(parameterization, x)
    p = space.init(x)
    for i in range(steps):
        p.requires_grad_(True)
        with torch.enable_grad():  # also when called under torch.no_grad()
            img = space.image(p)
            if shifts is not None:
                img = roll_images(img, shifts[i])
            loss = objective((img / 255.0 - mean) / std, filters)  # images are independent: one backward
            (grad,) = torch.autograd.grad(loss, p)
        grad = grad / (grad.pow(2).mean(dim=tuple(range(1, grad.ndim)), keepdim=True).sqrt() + 1e-5)
        p = (p + step_size * grad).detach()
        bar.update(1)
    return space.image(p).detach()


def _check_variants(point: str, reduction: str, jitter: int, parameterization: str) -> None:
    """ValueError for an unknown point, reduction or parameterization, or a jitter that is not an int >= 0."""
    for what, value, known in (("point", point, POINTS), ("reduction", reduction, REDUCTIONS),
                               ("parameterization", parameterization, PARAMETERIZATIONS)):
        if value not in known:
            raise ValueError(f"unknown {what} {value!r}; choose from {', '.join(known)}")
    if isinstance(jitter, bool) or not isinstance(jitter, (int, np.integer)) or jitter < 0:
        raise ValueError(f"jitter must be an int >= 0 (pixels); got {jitter!r}")


def compute_receptive_fields(
    model: nn.Module,
    layer: str,
    *,
    normalization: str | dict | Normalization | None = None,
    size: int = 32,
    steps: int = 100,
    step_size: float = 0.5,
    restarts: int = 1,
    seed: int = 0,
    filters: Sequence[int] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    point: str = "conv",
    reduction: str = "mean",
    jitter: int = 0,
    parameterization: str = "pixel",
) -> ReceptiveFields:
    """Receptive fields of the filters of conv `layer` (a module path, or 'first').

    normalization: the model's input normalization on [0, 1] images (a preset name, dict or
    `Normalization`; None means none). filters: indices to compute (default all), in that order.
    batch_size: filters per batch (default all at once). restarts: average the raw pixel images
    of that many seeded runs. Runs on the model's device and dtype; the model's train/eval mode
    is restored afterwards. Deterministic for a given seed. The defaults of the four options
    below are the notebook's recipe; the others are Lucid/Lucent feature-visualization practice:

    point: 'conv' reads the conv (notebook); 'bn' the BatchNorm just after it; 'act' relu(bn), what the next layer gets.
    reduction: 'mean' climbs the map's spatial mean (notebook); 'center' its unit (H//2, W//2): a field of one window.
    jitter: each step, roll each image by a seeded random (dy, dx) in [-jitter, jitter] px: shift-robust fields.
    parameterization: 'pixel' (notebook); 'fourier' ascends a 1/freq-scaled spectrum (Lucid): low-frequency fields.

    'act' applies relu to the BatchNorm's output itself rather than finding the model's ReLU module,
    and a filter whose 'act' unit(s) are zero on the start image gets no gradient and keeps it.
    'bn' and 'act' raise ValueError for a conv no BatchNorm directly follows. Jitter offsets come
    from per-filter streams (seed, restart, filter, 1), so batching never changes a field. 'fourier'
    starts from the same start image (its spectrum divided by the scale) and keeps the step rule,
    so step_size is then in spectrum units; images stay in 0..255 pixel space either way.
    """
    _check_variants(point, reduction, jitter, parameterization)
    if steps < 0 or restarts < 1 or size < 1:
        raise ValueError("need steps >= 0, restarts >= 1 and size >= 1")
    name = resolve_layer_name(model, layer, size)
    conv = resolve_conv(model, name)
    filters = list(range(conv.out_channels)) if filters is None else [int(f) for f in filters]
    bad = [f for f in filters if not 0 <= f < conv.out_channels]
    if bad or not filters:
        raise ValueError(f"filter indices must be in [0, {conv.out_channels}) and non-empty; got {bad or filters}")
    channels = input_channels(model, size)
    to_input = get_normalization(normalization).for_channels(channels)
    param = next(model.parameters())
    chunk = batch_size or len(filters)
    chunks = [filters[i:i + chunk] for i in range(0, len(filters), chunk)]

    objective = make_objective(model, conv, name, point, reduction, channels, size)
    total = np.zeros((len(filters), channels, size, size))
    was_training = model.training
    model.eval()
    bar = progress_bar(total=restarts * len(chunks) * steps, desc=f"fields {name}", enabled=progress)
    try:
        for restart in range(restarts):
            start = 0
            for part in chunks:
                x0 = torch.from_numpy(initial_images(seed, restart, part, channels, size))
                x0 = x0.to(dtype=param.dtype, device=param.device)
                idx = torch.tensor(part, device=param.device)
                shifts = jitter_shifts(seed, restart, part, steps, jitter) if jitter else None
                x = _climb(objective, x0, idx, to_input, steps, step_size, bar, parameterization=parameterization,
                           shifts=shifts)
                total[start:start + len(part)] += x.double().cpu().numpy()
                start += len(part)
    finally:
        bar.close()
        model.train(was_training)
    params = dict(
        layer=name, filters=filters, size=size, steps=steps, step_size=step_size, restarts=restarts, seed=seed,
        in_chans=channels, normalization=to_input.to_dict(), model=getattr(model, "achroma_arch", None),
        point=point, reduction=reduction, jitter=int(jitter), parameterization=parameterization,
    )
    return ReceptiveFields.from_raw(name, total / restarts, params)
