"""Receptive fields by gradient ascent in input space, all filters of a layer in one batch.

The notebook's recipe, per filter: start from `rand * 20 + 128` in 0..255 pixel space, climb the
mean activation of the filter with the gradient RMS-normalized (g / (sqrt(mean(g^2)) + 1e-5)),
step 0.5, 100 steps. Here image i of a batch climbs filter i; in eval mode the images do not
interact, so the batch gives each filter exactly its one-at-a-time result. The ascent runs in
pixel space and pixels reach the model through its normalization, (x / 255 - mean) / std, so the
recipe is the notebook's whatever the model's input normalization. The forward pass stops at the
layer, and the layer's own gradient is a constant map (see `_Objective`).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from ..progress import progress as progress_bar

from ..data import Normalization, get_normalization
from ..models.inspect import _StopForward, input_channels, resolve_conv, resolve_layer_name
from .result import ReceptiveFields


def initial_images(seed: int, restart: int, filters: Sequence[int], channels: int, size: int) -> np.ndarray:
    """Start images `rand * 20 + 128`, one per filter, each from its own stream (seed, restart, filter).

    Seeding per filter makes a filter's start (hence its field) independent of which other
    filters share its batch.
    """
    return np.stack([np.random.default_rng([seed, restart, f]).random((channels, size, size)) * 20.0 + 128.0
                     for f in filters])


class _Objective:
    """Sum over images of each one's objective, the mean of its own filter's map at a conv layer.

    The forward pass stops at the layer (a hook raises), so nothing after it is computed. For a
    plain nn.Conv2d the objective is affine in the conv's input z: mean(conv(z)[f]) = <z, G_f> + c,
    where G_f, the gradient of that mean, does not depend on z. G is computed once per batch of
    filters and the layer itself is never run during the ascent; the gradient that reaches the
    image is exactly the one the full layer would send back. A Conv2d subclass with its own
    forward (weight standardization...) may not be affine: it is run whole.
    """

    def __init__(self, model: nn.Module, conv: nn.Conv2d) -> None:
        self.model = model
        self.conv = conv
        self.affine = type(conv).forward is nn.Conv2d.forward
        self._caught: torch.Tensor | None = None
        self._grad_key: tuple | None = None
        self._grad: torch.Tensor | None = None

    def _catch_input(self, _module: nn.Module, inputs: Any) -> None:
        self._caught = inputs[0]
        raise _StopForward

    def _catch_output(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        self._caught = output
        raise _StopForward

    def _run_to_layer(self, x: torch.Tensor) -> torch.Tensor:
        self._caught = None
        if self.affine:
            handle = self.conv.register_forward_pre_hook(self._catch_input)
        else:
            handle = self.conv.register_forward_hook(self._catch_output)
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        caught, self._caught = self._caught, None
        if caught is None:
            raise ValueError("the forward pass never reached the requested layer")
        return caught

    def mean_gradients(self, z: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        """G (B, C, H, W): gradient of the mean of conv output channel filters[b] w.r.t. input image b."""
        key = (tuple(filters.tolist()), tuple(z.shape[1:]), z.dtype, z.device)
        if key != self._grad_key:
            with torch.enable_grad():
                probe = torch.zeros((len(filters), *z.shape[1:]), dtype=z.dtype, device=z.device, requires_grad=True)
                out = self.conv(probe)
                mean = out[torch.arange(len(filters), device=z.device), filters].mean(dim=(1, 2)).sum()
                (self._grad,) = torch.autograd.grad(mean, probe)
            self._grad_key = key
        assert self._grad is not None
        return self._grad

    def __call__(self, x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        caught = self._run_to_layer(x)
        if self.affine:  # <z_b, G_fb> differs from the mean of the map by a constant only
            return (caught * self.mean_gradients(caught.detach(), filters)).sum()
        rows = torch.arange(x.shape[0], device=x.device)
        return caught[rows, filters].mean(dim=(1, 2)).sum()


def _climb(objective: _Objective, x: torch.Tensor, filters: torch.Tensor, to_input: Normalization,
           steps: int, step_size: float, bar: Any) -> torch.Tensor:
    """`steps` RMS-normalized ascent steps on pixel images `x`; image b climbs channel filters[b]."""
    shape = (1, -1, 1, 1)
    mean = torch.tensor(to_input.mean, dtype=x.dtype, device=x.device).view(shape)
    std = torch.tensor(to_input.std, dtype=x.dtype, device=x.device).view(shape)
    x = x.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        with torch.enable_grad():  # also when called under torch.no_grad()
            loss = objective((x / 255.0 - mean) / std, filters)  # images are independent: one backward
            (grad,) = torch.autograd.grad(loss, x)
        grad = grad / (grad.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-5)
        x = (x + step_size * grad).detach()
        bar.update(1)
    return x


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
) -> ReceptiveFields:
    """Receptive fields of the filters of conv `layer` (a module path, or 'first').

    normalization: the model's input normalization on [0, 1] images (a preset name, dict or
    `Normalization`; None means none). filters: indices to compute (default all), in that order.
    batch_size: filters per batch (default all at once). restarts: average the raw pixel images
    of that many seeded runs. Runs on the model's device and dtype; the model's train/eval mode
    is restored afterwards. Deterministic for a given seed.
    """
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

    objective = _Objective(model, conv)
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
                x = _climb(objective, x0, idx, to_input, steps, step_size, bar)
                total[start:start + len(part)] += x.double().cpu().numpy()
                start += len(part)
    finally:
        bar.close()
        model.train(was_training)
    params = dict(
        layer=name, filters=filters, size=size, steps=steps, step_size=step_size, restarts=restarts, seed=seed,
        in_chans=channels, normalization=to_input.to_dict(), model=getattr(model, "achroma_arch", None),
    )
    return ReceptiveFields.from_raw(name, total / restarts, params)
