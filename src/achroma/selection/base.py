"""The selection protocol and its registry: which channels of a channel group become one.

A selection is one small object per method, registered under its name. It reads a
`SelectionInput` (the gray model as merged so far, its trace, the group to shrink and the share to
keep) and returns a `Selected`: a clustering of the group's channels, and what it was computed from.
The pipeline merges the clustering (averaging each cluster, or keeping the representatives as
they are when the selection `prunes`). Adding a method is one new file with a subclass of
`Selection` decorated by `register_selection`, imported in `selection/__init__.py`, and its test:

    >>> @register_selection
    ... class Mine(DistanceSelection):
    ...     name, help = "mine", "what a reviewer asks it"
    ...     def distances(self, inp): return my_matrix(inp.model, inp.group.rows)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

if TYPE_CHECKING:
    from ..clustering import Clustering
    from ..surgery.groups import ChannelGraph, ChannelGroup


@dataclass
class SelectionInput:
    """What a selection may read for one group. `group.rows` maps each writer conv to its rows."""

    model: nn.Module  # the gray model as merged so far
    graph: ChannelGraph  # its trace
    group: ChannelGroup  # the group to shrink
    keep: float | None  # share of the group's channels to keep (or None with eps)
    eps: float | None = None  # a distance threshold instead of keep (fields with dbscan/agglomerative)
    metric: str | None = None  # fields and kernels: the distance between filters
    cluster_method: str = "kmeans"
    seed: int = 0
    color: nn.Module | None = None  # the color model and its input normalization
    color_norm: Any = None
    size: int = 32
    calibration: Any = None  # an ImageDataset of raw images (gray-able) for data-driven methods
    device: torch.device = torch.device("cpu")
    fields: dict[str, Any] = field(default_factory=dict)  # compute_receptive_fields keywords
    fields_from: str = "color"
    imed_r: float = 1.0
    min_samples: int = 1
    progress: bool = False

    @property
    def path(self) -> str:
        return self.group.root

    @property
    def metric_kw(self) -> dict[str, Any]:
        return {"r": self.imed_r} if self.metric == "imed" else {}


@dataclass
class Selected:
    """A selection's answer: the clustering, the eps it used, and what it was computed from."""

    clustering: Clustering
    eps: float | None = None
    fields: Any = None
    distances: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)


class Selection:
    """One method of choosing clusters. Subclasses set `name` and `help` and implement `select`."""

    name: ClassVar[str]
    help: ClassVar[str]
    needs_metric: ClassVar[bool] = False  # a distance metric between filters (fields, kernels)
    takes_eps: ClassVar[bool] = False  # may be given eps instead of keep
    prunes: ClassVar[bool] = False  # representatives kept as they are, the others removed (no average)

    def select(self, inp: SelectionInput) -> Selected:
        raise NotImplementedError

    def check(self, keep: float | None, eps: float | None, metric: str | None, layer: str) -> None:
        """ValueError for settings this method cannot take (before any work)."""
        if self.needs_metric and metric is None:
            raise ValueError(f"layer {layer}: selection {self.name!r} needs a metric")
        if keep is None and not self.takes_eps:
            raise ValueError(f"selection {self.name!r} takes keep (a share of the filters), not eps")


class DistanceSelection(Selection):
    """A method that gives an N x N distance matrix; the group is clustered on it by count (or eps)."""

    def distances(self, inp: SelectionInput) -> tuple[np.ndarray, dict[str, Any]]:
        """(matrix, extras): extras may hold 'fields', 'features' (points whose Euclidean distances are
        the matrix) and 'timings' (stage seconds)."""
        raise NotImplementedError

    def select(self, inp: SelectionInput) -> Selected:
        from .clusters import cluster_group

        t = time.perf_counter()
        dist, extra = self.distances(inp)
        timings = {**extra.get("timings", {}), f"distances {inp.path}": time.perf_counter() - t
                   - sum(extra.get("timings", {}).values())}
        t = time.perf_counter()
        clustering, used = cluster_group(dist, inp.graph.constraints(inp.path), inp.cluster_method, inp.eps,
                                         inp.keep, inp.path, inp.min_samples, extra.get("features"))
        timings[f"clustering {inp.path}"] = time.perf_counter() - t
        return Selected(clustering, used, extra.get("fields"), dist, timings)


_REGISTRY: dict[str, Selection] = {}


def register_selection(cls: type[Selection]) -> type[Selection]:
    """Class decorator: make `cls` available as `cls.name` (one instance, shared)."""
    if cls.name in _REGISTRY:
        raise ValueError(f"selection {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def get_selection(name: str) -> Selection:
    if name not in _REGISTRY:
        raise ValueError(f"unknown selection {name!r}; choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def selection_names() -> tuple[str, ...]:
    """The registered selections, in registration order (the CLI's choices)."""
    return tuple(_REGISTRY)


def selection_help() -> str:
    return "; ".join(f"{s.name}: {s.help}" for s in _REGISTRY.values())
