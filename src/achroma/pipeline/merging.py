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

from ..clustering import (AgglomerativeClustering, BoundedAgglomerativeClustering, Clustering, DBSCANClustering,
                          KMeansClustering, keep_target, minmax_scale, search_keep)
from ..distances import pairwise_distances
from ..fields import ReceptiveFields, compute_receptive_fields, resolve_conv
from ..fold import GRAY_NORMALIZATION, find_input_conv
from ..models.inspect import input_channels
from ..surgery import ChannelConstraints, channel_constraints, check_disjoint_groups, merge_channels
from ..training import count_parameters
from .config import CompressConfig, LayerPlan
from .spec import check_cluster_setting, check_metric, per_layer, resolve_layers


CALIBRATION_IMAGES = 500  # images whose activations the 'activations' selection correlates


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


def _cluster(dist: np.ndarray, method: str, eps: float | None, keep: float | None, layer: str,
             min_samples: int) -> tuple[Clustering, float | None]:
    """Fit one layer's clustering; returns it and the eps it used (None for kmeans/agglomerative-by-count)."""
    extra = {"min_samples": min_samples} if method == "dbscan" else {}
    if keep is not None:
        est = search_keep(dist, keep=keep, method=method, **extra)
    elif method == "dbscan":
        est = DBSCANClustering(eps=float(eps), min_samples=min_samples).fit(dist)
    else:
        est = AgglomerativeClustering(distance_threshold=float(eps)).fit(dist)
    result = est.to_clustering(layer=layer)
    used = getattr(est, "eps_", None)
    if used is None and method == "agglomerative" and eps is not None:
        used = float(eps)
    return result, used


def _balanced_removals(blocks: list[list[int]], removals: list[int], constraints: ChannelConstraints) -> list[int]:
    """Lower per-block removal counts until every balanced partition loses equally in each of its blocks."""
    removals = list(removals)
    changed = True
    while changed:
        changed = False
        for part in constraints.partitions:
            if not part.balanced:
                continue
            members: list[list[int]] = [[] for _ in range(part.n_blocks)]  # meet blocks inside each block
            for i, block in enumerate(blocks):
                if block[0] in part.block:
                    members[part.block[block[0]]].append(i)
            lost = [sum(removals[i] for i in inside) for inside in members]
            floor = min(lost)
            for inside, total in zip(members, lost):
                for i in sorted(inside, key=lambda i: -removals[i]):
                    if total <= floor:
                        break
                    cut = min(removals[i], total - floor)
                    removals[i] -= cut
                    total -= cut
                    changed = changed or cut > 0
    return removals


def by_count(method: str, k: int) -> Any:
    """An estimator that makes exactly k clusters in the spirit of `method` (dbscan: single linkage)."""
    if method == "kmeans":
        return KMeansClustering(n_clusters=k)
    if method == "bounded":
        return BoundedAgglomerativeClustering(n_clusters=k)
    return AgglomerativeClustering(n_clusters=k, linkage="single" if method == "dbscan" else "average", scale=None)


def _cluster_constrained(dist: np.ndarray, constraints: ChannelConstraints, method: str, eps: float | None,
                         keep: float | None, layer: str, min_samples: int) -> tuple[Clustering, float | None]:
    """Cluster within each block the surgery allows (grouped convs, channel splits), keep applied per block.

    With `keep`, each block keeps round(keep * size) filters, lowered where a grouped conv or a
    split needs its blocks to lose equally; the count per block is then exact: kmeans, bounded and
    agglomerative take it as n_clusters, dbscan (min_samples 1 is single linkage cut at eps) becomes
    single-linkage agglomerative with that count. With `eps`, every block is clustered with the
    same eps on the layer's scaled matrix; merge_channels refuses the result if it is unbalanced.
    """
    blocks = constraints.blocks()
    labels = np.zeros(constraints.n_channels, dtype=np.int64)
    reps: list[int] = []
    if keep is not None:
        removals = [len(b) - keep_target(len(b), keep) for b in blocks]
        removals = _balanced_removals(blocks, removals, constraints)
    scaled = minmax_scale(dist)
    for i, block in enumerate(blocks):
        sub = scaled[np.ix_(block, block)]
        if len(block) == 1 or (keep is not None and removals[i] == 0):
            sub_labels, sub_reps = np.arange(len(block)), list(range(len(block)))
        else:
            if keep is not None:
                k = len(block) - removals[i]
                est = by_count(method, k)
            elif method == "dbscan":
                est = DBSCANClustering(eps=float(eps), min_samples=min_samples, scale=None)
            else:
                est = AgglomerativeClustering(distance_threshold=float(eps), scale=None)
            part = est.fit(sub).to_clustering()
            sub_labels, sub_reps = part.labels, part.representatives
        for local, label in enumerate(sub_labels):
            labels[block[local]] = len(reps) + int(label)
        reps.extend(block[r] for r in sub_reps)
    clustering = Clustering(labels, reps, len(reps), method, {"constrained_blocks": len(blocks)}, layer)
    return clustering, (None if keep is not None else eps)


def plan_layers(model: nn.Module, norm: Any, size: int, config: CompressConfig,
                clusterings: dict[str, Clustering] | None = None) -> list[LayerPlan]:
    """Check everything that can be checked before any work; one plan per layer, in merge order."""
    clusterings = dict(clusterings or {})
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        raise ValueError("the model has no Conv2d layer: nothing to fold or merge")
    channels = input_channels(model, size)
    if channels != 3:
        raise ValueError(f"compress needs a color model (3 input channels); this one takes {channels}")
    p = next(model.parameters())
    find_input_conv(model, norm(torch.rand(1, 3, size, size, dtype=p.dtype, device=p.device)))  # conv first?
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
            if m is None and config.selection in ("fields", "kernels"):
                raise ValueError(f"layer {path}: no metric")
            check_cluster_setting(config.cluster_method, e, k, path)
            if config.selection != "fields" and k is None:
                raise ValueError(f"selection {config.selection!r} takes keep (a share of the filters), not eps")
        plans.append(LayerPlan(path, m, e, k, clusterings.get(path)))
    check_disjoint_groups(model, paths, torch.zeros(1, 3, size, size, dtype=p.dtype, device=p.device))
    return plans


def merge_network(gray: nn.Module, plans: list[LayerPlan], config: CompressConfig, context: MergeContext,
                  timings: dict[str, float], log: Any = None) -> tuple[nn.Module, list[LayerResult]]:
    """Merge every planned layer of `gray` in order; returns the merged model (a new one) and per-layer results."""
    current, done = gray, []
    for plan in plans:
        current, result = merge_layer(current, plan, config, context, timings)
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


def _select(current: nn.Module, plan: LayerPlan, config: CompressConfig, context: MergeContext,
            timings: dict[str, float]) -> tuple[Clustering, float | None, ReceptiveFields | None, np.ndarray | None]:
    """The clustering of one layer's filters by `config.selection`; (clustering, eps used, fields, distances)."""
    path, metric = plan.path, plan.metric
    rf = None
    t = time.perf_counter()
    kw = {"r": config.imed_r} if metric == "imed" else {}
    if config.selection == "fields":
        net, norm = (current, GRAY_NORMALIZATION) if config.fields_from == "current" else (context.color,
                                                                                           context.color_norm)
        rf = compute_receptive_fields(net, path, normalization=norm, size=context.size, seed=config.seed,
                                      progress=config.progress, **config.fields)
        timings[f"fields {path}"] = time.perf_counter() - t
        t = time.perf_counter()
        dist = pairwise_distances(rf.gray, metric, **kw)
    else:
        dist = _baseline_distances(current, plan, config, context)
    timings[f"distances {path}"] = time.perf_counter() - t
    t = time.perf_counter()
    constraints = channel_constraints(current, path, context.example)
    if constraints.free:
        clustering, used_eps = _cluster(dist, config.cluster_method, plan.eps, plan.keep, path, config.min_samples)
    else:  # grouped convs / channel splits in the group: cluster within the blocks they allow
        clustering, used_eps = _cluster_constrained(dist, constraints, config.cluster_method, plan.eps, plan.keep,
                                                    path, config.min_samples)
    timings[f"clustering {path}"] = time.perf_counter() - t
    clustering.params.update(metric=metric, selection=config.selection, **kw)
    if plan.keep is not None:
        clustering.params["keep"] = plan.keep
    return clustering, used_eps, rf, dist


def _baseline_distances(current: nn.Module, plan: LayerPlan, config: CompressConfig,
                        context: MergeContext) -> np.ndarray:
    """Distances of a baseline selection ('kernels', 'weights', 'activations') over the group's writers."""
    from ..data import BatchLoader
    from ..selection import selection_distances
    from ..surgery.groups import channel_groups

    writers = next((g.writers for g in channel_groups(current, context.example) if plan.path in g.writers),
                   [plan.path])
    batches = None
    if config.selection == "activations":
        if context.calibration is None:
            raise ValueError("selection 'activations' needs calibration images")
        calib = context.calibration
        per_class = max(1, CALIBRATION_IMAGES // max(1, len(calib.classes)))
        if len(calib) > CALIBRATION_IMAGES:
            calib = calib.stratified_subset(per_class, seed=config.seed)
        batches = BatchLoader(calib, batch_size=100, mode="gray", normalize=GRAY_NORMALIZATION,
                              device=context.device)
    kw = {"r": config.imed_r} if plan.metric == "imed" else {}
    return selection_distances(config.selection, current, writers, metric=plan.metric or "mse", batches=batches,
                               **kw)


def _select_without_distances(current: nn.Module, plan: LayerPlan, config: CompressConfig,
                              context: MergeContext, timings: dict[str, float]) -> tuple[nn.Module, Clustering]:
    """'random' (random clusters, merged) and 'l1' (Torch-Pruning's L1 importance, pruned): the merged model."""
    from ..selection import magnitude_keep, random_clustering, require_free
    from ..surgery.prune import prune_channels, pruning_clustering

    n = resolve_conv(current, plan.path).out_channels
    k = keep_target(n, plan.keep)
    t = time.perf_counter()
    if config.selection == "random":
        require_free(current, plan.path, context.example, "random")
        clustering = random_clustering(n, k, config.seed, layer=plan.path)
        timings[f"clustering {plan.path}"] = time.perf_counter() - t
        t = time.perf_counter()
        merged = merge_channels(current, plan.path, clustering, context.example, fold=config.merge == "average")
    else:
        keep = magnitude_keep(current, plan.path, k, context.example)
        clustering = pruning_clustering(keep, n, layer=plan.path)
        timings[f"clustering {plan.path}"] = time.perf_counter() - t
        t = time.perf_counter()
        merged = prune_channels(current, plan.path, keep, context.example)
    timings[f"merge {plan.path}"] = time.perf_counter() - t
    clustering.params.update(selection=config.selection, keep=plan.keep)
    return merged.to(context.device).eval(), clustering


def merge_layer(current: nn.Module, plan: LayerPlan, config: CompressConfig, context: MergeContext,
                timings: dict[str, float]) -> tuple[nn.Module, LayerResult]:
    """Select -> merge for one layer of `current` (a new model is returned)."""
    path = plan.path
    conv = resolve_conv(current, path)
    before, params_before = conv.out_channels, count_parameters(current)
    rf = dist = None
    if plan.clustering is not None:
        given = plan.clustering
        clustering, source, method, metric, used_eps, keep = (given, "given", given.method, None,
                                                              given.params.get("eps"), None)
    elif config.selection in ("random", "l1"):
        source, method, metric, keep, used_eps = "computed", config.selection, None, plan.keep, None
        merged, clustering = _select_without_distances(current, plan, config, context, timings)
    else:
        source, method, metric, keep = "computed", config.cluster_method, plan.metric, plan.keep
        clustering, used_eps, rf, dist = _select(current, plan, config, context, timings)
    if config.selection not in ("random", "l1") or plan.clustering is not None:
        t = time.perf_counter()
        merged = merge_channels(current, path, clustering, context.example,
                                fold=config.merge == "average").to(context.device).eval()
        timings[f"merge {path}"] = time.perf_counter() - t
    after = resolve_conv(merged, path).out_channels
    pruned = config.selection == "l1" or config.merge == "medoid"
    return merged, LayerResult(path, metric, method, used_eps, keep, before, after, params_before,
                               count_parameters(merged), clustering, rf, dist, source, pruned)


def _check_given(model: nn.Module, path: str, clustering: Clustering) -> None:
    """A given clustering must be for this layer and label every one of its filters."""
    channels = resolve_conv(model, path).out_channels
    if clustering.layer not in (None, path):
        raise ValueError(f"the clustering given for layer {path} was made for layer {clustering.layer}")
    if clustering.n_filters != channels:
        raise ValueError(f"the clustering for layer {path} has {clustering.n_filters} labels but the layer has "
                         f"{channels} filters")
