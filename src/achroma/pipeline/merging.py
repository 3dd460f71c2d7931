"""Merge a gray model layer by layer, as `LayerPlan`s say: select (fields, distances, clustering), then merge.

Shared by `compress` (one model, a table of repairs) and `sweep` (many budgets and methods). Each
layer's clustering is made in the model as it is at that point (folded, earlier layers merged);
with fields_from='color' the fields themselves come from the color model. Every stage's seconds
go into `timings` ('fields <layer>', 'distances <layer>', 'clustering <layer>', 'merge <layer>').
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..clustering import Clustering
from ..fields import ReceptiveFields, resolve_conv
from ..fold import find_input_conv
from ..models.inspect import conv_forward_order, input_channels
from ..selection import DistanceSelection, Selected, SelectionInput, get_selection
from ..surgery import check_disjoint_groups
from ..surgery.groups import ChannelGraph
from ..training import count_parameters
from .config import CompressConfig, LayerPlan, resolve_defaults
from .spec import check_cluster_setting, check_metric, per_layer, resolve_layers



@dataclass
class LayerResult:
    """What compressing one layer did: its clustering, and the fields and distances it came from."""

    layer: str
    metric: str | None  # None when the clustering was given
    method: str
    eps: float | None  # the eps used: given, or found by the keep search (dbscan)
    keep: float | None
    channels_before: int
    channels_after: int
    params_before: int
    params_after: int
    clustering: Clustering
    fields: ReceptiveFields | None = None
    distances: np.ndarray | None = None
    source: str = "computed"  # or the path of a given clustering
    pruned: bool = False  # representatives kept as they were, other members removed (no averaging)

    def summary(self) -> dict[str, Any]:
        """JSON-ready, without the arrays."""
        return {"layer": self.layer, "metric": self.metric, "method": self.method, "eps": self.eps,
                "keep": self.keep, "filters_before": self.channels_before, "filters_after": self.channels_after,
                "params_before": self.params_before, "params_after": self.params_after, "source": self.source,
                "labels": self.clustering.labels.tolist(), "representatives": list(self.clustering.representatives),
                "pruned": self.pruned}


def refit_merges(layers: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[int]]]:
    """What ls-refit needs of each merged layer (`LayerResult.summary()`s): labels and representatives.

    A pruned layer's kept channel stands for itself alone (its refit target is its own reference
    output, not the mean of the channels removed beside it), so its other members are labelled -1.
    Summaries written before the flag existed count as pruned when their method is 'l1'.
    """
    out = {}
    for ly in layers:
        labels, reps = list(ly["labels"]), list(ly["representatives"])
        if ly.get("pruned", ly.get("method") == "l1"):
            keep = set(reps)
            labels = [lab if i in keep else -1 for i, lab in enumerate(labels)]
        out[ly["layer"]] = (labels, reps)
    return out


@dataclass
class MergeContext:
    """What every layer's merge reads besides its plan: the color model, sizes, calibration images."""

    color: nn.Module
    color_norm: Any
    size: int
    example: torch.Tensor  # a gray batch for tracing
    device: torch.device
    calibration: Any = None  # raw [0, 1] gray images (ImageDataset) for data-driven selections


def check_color_model(model: nn.Module, norm: Any, size: int) -> None:
    """ValueError unless `model` is a color CNN whose input goes first into a conv."""
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        raise ValueError("the model has no Conv2d layer: nothing to fold or merge")
    channels = input_channels(model, size)
    if channels != 3:
        raise ValueError(f"compress needs a color model (3 input channels); this one takes {channels}")
    p = next(model.parameters())
    find_input_conv(model, norm(torch.rand(1, 3, size, size, dtype=p.dtype, device=p.device)))  # conv first?


def plan_layers(model: nn.Module, norm: Any, size: int, config: CompressConfig,
                clusterings: dict[str, Clustering] | None = None) -> list[LayerPlan]:
    """Check everything that can be checked before any work; one plan per layer, in merge order."""
    clusterings = dict(clusterings or {})
    config = resolve_defaults(config)
    check_color_model(model, norm, size)
    p = next(model.parameters())
    paths = resolve_layers(model, config.layers, size)
    metrics = [None if m is None else check_metric(m) for m in per_layer(config.metric, len(paths), "metric")]
    eps_list = per_layer(config.eps, len(paths), "eps", float)
    keep_list = per_layer(config.keep, len(paths), "keep", float)
    unknown = sorted(set(clusterings) - set(paths))
    if unknown:
        raise ValueError(f"clustering given for {', '.join(unknown)}, which is not among the layers {paths}")
    plans = []
    for path, m, e, k in zip(paths, metrics, eps_list, keep_list):
        if path in clusterings:
            _check_given(model, path, clusterings[path])
        else:
            check_cluster_setting(config.cluster_method, e, k, path)
            get_selection(config.selection).check(k, e, m, path)
        plans.append(LayerPlan(path, m, e, k, clusterings.get(path)))
    check_disjoint_groups(model, paths, torch.zeros(1, 3, size, size, dtype=p.dtype, device=p.device))
    return plans


def merge_network(gray: nn.Module, plans: list[LayerPlan], config: CompressConfig, context: MergeContext,
                  timings: dict[str, float], log: Any = None) -> tuple[nn.Module, list[LayerResult]]:
    """Merge every planned layer of `gray` in order; returns the merged model (a new one) and per-layer results."""
    config = resolve_defaults(config)
    current, done = gray, []
    order = conv_forward_order(gray, context.size)  # a merge keeps every conv in its place: traced once
    for plan in plans:
        current, result = merge_layer(current, plan, config, context, timings, own=current is not gray, order=order)
        done.append(result)
        if config.between != "none":  # group by group: repair before the next group is selected
            current = _repair_between(current, gray, done, config, context, timings)
        if log is not None:
            how = f"eps {result.eps:.4g}" if result.eps is not None else f"{result.clustering.n_clusters} clusters"
            log(f"layer {plan.path}: {result.channels_before} -> {result.channels_after} filters "
                f"({result.metric or result.method}, {result.method}, {how}); "
                f"{result.params_before:,} -> {result.params_after:,} parameters")
    return current, done


def _repair_between(current: nn.Module, gray: nn.Module, done: list[LayerResult], config: CompressConfig,
                    context: MergeContext, timings: dict[str, float]) -> nn.Module:
    """`config.between` on the model merged so far, against the uncompressed gray model."""
    from .repairs import repair_model

    if context.calibration is None:
        raise ValueError(f"a {config.between} between merges needs calibration images")
    t = time.perf_counter()
    merges = refit_merges([ly.summary() for ly in done])
    fixed = repair_model(current, config.between, context.calibration, config.repair_config, seed=config.seed,
                         device=context.device, reference=gray, merges=merges).eval()
    timings[f"between {done[-1].layer}"] = time.perf_counter() - t
    return fixed


def selection_input(current: nn.Module, graph: ChannelGraph, plan: LayerPlan, config: CompressConfig,
                    context: MergeContext) -> SelectionInput:
    """What `config.selection` reads to shrink `plan.path`'s group of `current` (traced as `graph`)."""
    return SelectionInput(model=current, graph=graph, group=graph.group(plan.path), keep=plan.keep, eps=plan.eps,
                          metric=plan.metric, cluster_method=config.cluster_method, seed=config.seed,
                          color=context.color, color_norm=context.color_norm, size=context.size,
                          calibration=context.calibration, device=context.device, fields=config.fields,
                          fields_from=config.fields_from, imed_r=config.imed_r, min_samples=config.min_samples,
                          progress=config.progress)


def merge_layer(current: nn.Module, plan: LayerPlan, config: CompressConfig, context: MergeContext,
                timings: dict[str, float], own: bool = False, order: list[str] | None = None
                ) -> tuple[nn.Module, LayerResult]:
    """Select -> merge for one layer of `current` (one trace). A new model is returned; with `own`,
    `current` itself is edited (a model made by the previous step, which nobody else holds); `order`:
    the convs' forward order, when known."""
    path = plan.path
    graph = ChannelGraph(current, context.example, own=own, order=order)
    conv = graph.conv(path)
    before, params_before = conv.out_channels, count_parameters(current)
    selection = get_selection(config.selection)
    if plan.clustering is not None:
        given = plan.clustering
        chosen = Selected(given, given.params.get("eps"))
        source, method, metric, keep, prunes = "given", given.method, None, None, config.merge == "medoid"
    else:
        chosen = selection.select(selection_input(current, graph, plan, config, context))
        timings.update(chosen.timings)
        source, keep = "computed", plan.keep
        method = config.cluster_method if isinstance(selection, DistanceSelection) else selection.name
        metric = plan.metric if selection.needs_metric else None
        prunes = selection.prunes or config.merge == "medoid"
        chosen.clustering.params.update(metric=metric, selection=config.selection, **(
            {"r": config.imed_r} if metric == "imed" else {}))
        if plan.keep is not None:
            chosen.clustering.params["keep"] = plan.keep
    t = time.perf_counter()
    merged = graph.merge(path, chosen.clustering, fold=not prunes).to(context.device).eval()
    timings[f"merge {path}"] = time.perf_counter() - t
    after = resolve_conv(merged, path).out_channels
    return merged, LayerResult(path, metric, method, chosen.eps, keep, before, after, params_before,
                               count_parameters(merged), chosen.clustering, chosen.fields, chosen.distances, source,
                               prunes)


def _check_given(model: nn.Module, path: str, clustering: Clustering) -> None:
    """A given clustering must be for this layer and label every one of its filters."""
    channels = resolve_conv(model, path).out_channels
    if clustering.layer not in (None, path):
        raise ValueError(f"the clustering given for layer {path} was made for layer {clustering.layer}")
    if clustering.n_filters != channels:
        raise ValueError(f"the clustering for layer {path} has {clustering.n_filters} labels but the layer has "
                         f"{channels} filters")
