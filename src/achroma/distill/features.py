"""Feature matching for a merged student: each merged channel is trained toward what it stands for.

After a merge, channel k of a merged BatchNorm stands for a cluster of the uncompressed model's
channels; the merge's average aims at the mean of their BN outputs (the same target ls-refit solves
for, `repair/refit.py`). `FeatureMatch` adds that target to the distillation loss at every such
BatchNorm, on the student's own images run through the uncompressed gray model (FitNets, Romero et
al. ICLR 2015, with the cluster map in place of a learned projection):

    weight * mean over layers of ||s_l - M_l t_l||^2 / ||M_l t_l||^2

s_l the student's BN output, t_l the reference's, M_l the average over each cluster's members. The
relative error makes every layer count alike whatever its scale. A model with nothing merged has no
such layer and the term is zero: its training is plain distillation.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn as nn


@dataclass
class FeatureMatch:
    """The reference (the uncompressed gray model, same input as the student), the layers to match
    (a BatchNorm's path, the same in both models -> per student channel, the reference channels it
    stands for) and the term's weight in the loss."""

    reference: nn.Module
    layers: Mapping[str, Sequence[Sequence[int]]]
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise ValueError(f"the feature weight must be >= 0; got {self.weight}")
        for path, members in self.layers.items():
            width = self.reference.get_submodule(path).num_features
            flat = sorted(i for m in members for i in m)
            if any(not m for m in members) or flat != sorted(set(flat)) or (flat and not 0 <= flat[0] <= flat[-1] < width):
                raise ValueError(f"feature layer {path!r}: each student channel needs distinct reference channels "
                                 f"in [0, {width})")

    def averaging(self, path: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """(reference channels, student channels): column k averages cluster k's members."""
        members = self.layers[path]
        m = torch.zeros(self.reference.get_submodule(path).num_features, len(members), device=device)
        for k, cluster in enumerate(members):
            m[list(cluster), k] = 1.0 / len(cluster)
        return m

    @contextmanager
    def attached(self, student: nn.Module) -> Iterator["_Session"]:
        """Hooks on both models' layers for the block's duration; the session computes the term."""
        session = _Session(self, student)
        try:
            yield session
        finally:
            session.close()


class _Session:
    """Captures the student's outputs at the layers on every forward and the reference's on `targets`."""

    def __init__(self, match: FeatureMatch, student: nn.Module):
        self.match = match
        self.student_out: dict[str, torch.Tensor] = {}
        self.target: dict[str, torch.Tensor] = {}
        self.averaging: dict[str, torch.Tensor] = {}
        self._handles = []
        for path in match.layers:
            self._handles.append(student.get_submodule(path).register_forward_hook(self._keep(self.student_out, path)))

    @staticmethod
    def _keep(store: dict, path: str):
        def hook(_m: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            store[path] = output
        return hook

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> None:
        """Run the reference (eval mode) on the student's input and keep each layer's cluster means."""
        ref = self.match.reference.eval()
        seen: dict[str, torch.Tensor] = {}
        handles = [ref.get_submodule(p).register_forward_hook(self._keep(seen, p)) for p in self.match.layers]
        try:
            ref(x)
        finally:
            for h in handles:
                h.remove()
        for path, out in seen.items():
            if path not in self.averaging:
                self.averaging[path] = self.match.averaging(path, out.device)
            self.target[path] = torch.einsum("nchw,ck->nkhw", out.float(), self.averaging[path])

    def loss(self) -> torch.Tensor | None:
        """The weighted mean relative squared error of the last student forward against the last
        targets; None when there is no layer to match."""
        if not self.match.layers:
            return None
        terms = []
        for path in self.match.layers:
            s, t = self.student_out[path].float(), self.target[path]
            terms.append((s - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12))
        return self.match.weight * torch.stack(terms).mean()  # with the student's graph: it is trained on

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
