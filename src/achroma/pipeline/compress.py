"""`compress`: fold a color model to gray, merge similar filters layer by layer, repair, measure.

The steps (DESIGN.md 1-7) in one call. Each layer's receptive fields are computed in the model as
it is at that point (folded, with the earlier layers already merged), so layer 2 is clustered by
what it sees through the merged layer 1. Every model it makes is scored on the same test images,
and the uncompressed folded model always gets the same repair as the merged one (same images,
same order, same budget): compression is judged against that row, not against the unrepaired fold.
"""
from __future__ import annotations

import copy
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..clustering import (AgglomerativeClustering, Clustering, DBSCANClustering, KMeansClustering, keep_target,
                          minmax_scale, search_keep)
from ..data import ImageDataset, get_normalization
from ..distances import pairwise_distances
from ..fields import ReceptiveFields, compute_receptive_fields, resolve_conv
from ..models.inspect import input_channels
from ..fold import GRAY_NORMALIZATION, FoldReport, find_input_conv, fold_to_gray
from ..surgery import ChannelConstraints, channel_constraints, check_disjoint_groups, merge_channels
from ..training import count_parameters, evaluate
from .repairs import RepairConfig, repair_model
from .spec import check_cluster_setting, check_metric, check_repairs, per_layer, resolve_layers

Log = Callable[[str], None]
_FIELD_DEFAULTS = {k: p.default for k, p in inspect.signature(compute_receptive_fields).parameters.items()
                   if k in ("steps", "step_size", "restarts")}


@dataclass
class Row:
    """One line of the table: a model on the test images in one input mode."""

    key: str  # color, color-gray3, folded, merged, merged+<repair>, folded+<repair>
    label: str
    model: str  # key into CompressionResult.models
    mode: str  # color | gray3 | gray
    repair: str  # none | bn-train | bn-stats
    accuracy: float | None
    loss: float | None
    n: int
    params: int

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


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

    def summary(self) -> dict[str, Any]:
        """JSON-ready, without the arrays."""
        return {"layer": self.layer, "metric": self.metric, "method": self.method, "eps": self.eps,
                "keep": self.keep, "filters_before": self.channels_before, "filters_after": self.channels_after,
                "params_before": self.params_before, "params_after": self.params_after, "source": self.source,
                "labels": self.clustering.labels.tolist(), "representatives": list(self.clustering.representatives)}


@dataclass
class CompressionResult:
    """Plain results of `compress`: table rows, per-layer clusterings, the models, how it was run."""

    dataset: str
    model_name: str | None
    normalization: dict[str, list[float]]
    layers: list[LayerResult]
    rows: list[Row]
    models: dict[str, nn.Module]
    fold: FoldReport
    repairs: list[str]
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def row(self, key: str) -> Row:
        for r in self.rows:
            if r.key == key:
                return r
        raise KeyError(f"no row {key!r}; rows: {', '.join(r.key for r in self.rows)}")

    @property
    def final_key(self) -> str:
        """The model `compress` hands on: merged and repaired by the first repair requested."""
        return "merged" if self.repairs[0] == "none" else f"merged+{self.repairs[0]}"

    @property
    def final_model(self) -> nn.Module:
        return self.models[self.final_key]

    def checkpoint_meta(self) -> dict[str, Any]:
        """Metadata for `save_checkpoint(path, result.final_model, meta)`: gray, no normalization."""
        return {**self.fold.checkpoint_meta(), "compression": {
            "from": self.model_name, "color_normalization": self.normalization, "repair": self.repairs[0],
            "layers": [ly.summary() for ly in self.layers], "dataset": self.dataset,
            "settings": self.settings}}


def _clock(log: Log | None, start: float) -> Log:
    def say(msg: str) -> None:
        if log is not None:
            log(f"[{time.perf_counter() - start:6.1f}s] {msg}")
    return say


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


def _cluster_constrained(dist: np.ndarray, constraints: ChannelConstraints, method: str, eps: float | None,
                         keep: float | None, layer: str, min_samples: int) -> tuple[Clustering, float | None]:
    """Cluster within each block the surgery allows (grouped convs, channel splits), keep applied per block.

    With `keep`, each block keeps round(keep * size) filters, lowered where a grouped conv or a
    split needs its blocks to lose equally; the count per block is then exact: kmeans and
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
                est = (KMeansClustering(n_clusters=k) if method == "kmeans" else AgglomerativeClustering(
                    n_clusters=k, linkage="single" if method == "dbscan" else "average", scale=None))
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


def compress(
    model: nn.Module,
    normalization: str | dict | Any,
    train_set: ImageDataset,
    test_set: ImageDataset,
    layers: str | Sequence[str] = "first:1",
    metric: str | Sequence[str] = "mse",
    cluster_method: str = "dbscan",
    eps: float | str | Sequence[float | None] | None = None,
    keep: float | str | Sequence[float | None] | None = None,
    repair: str | Sequence[str] = "bn-train",
    fields_kw: dict[str, Any] | None = None,
    seed: int = 0,
    *,
    clusterings: dict[str, Clustering] | None = None,
    repair_config: RepairConfig | None = None,
    imed_r: float = 1.0,
    min_samples: int = 1,
    border: str = "exact",
    fields_from: str = "color",
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    log: Log | None = print,
) -> CompressionResult:
    """Fold `model` (color, normalized by `normalization`) to gray, merge `layers`, repair, score.

    layers: module paths and/or 'first:N', in the order they are merged. metric, eps and keep: one
    value for all layers or one per layer ('mse,imed'); per layer exactly one of eps / keep
    unless `clusterings` gives that layer's clustering (then no fields are computed for it).
    repair: 'bn-train', 'bn-stats', 'distill' (the color model teaches the merged gray one), 'none',
    or several ('bn-train,bn-stats'); the first is the one
    `final_model` carries. fields_kw go to `compute_receptive_fields` (steps, restarts, ...).
    fields_from: 'color' (default) computes each layer's fields in the color model and clusters
    their luma, as the notebook did; 'current' computes them in the model as it is when that layer
    is merged (folded, earlier layers merged). In a gray model a first conv's field carries little
    more than the sign of its kernel sum; on CIFAR-10 (JPEG) 'color' gave the better repaired merge in
    every comparison made (docs/RESULTS.md: 2 models, 1 and 2 layers, 3 repairs).
    `train_set` feeds the repairs (use a subset for a smaller budget); `test_set` scores every row.
    Stage errors (unknown layer, bad clustering, one cluster, first layer not a conv) are ValueErrors.
    """
    start = time.perf_counter()
    say = _clock(log, start)
    timings: dict[str, float] = {}
    device = torch.device(device)
    repairs = check_repairs(repair)
    if fields_from not in ("current", "color"):
        raise ValueError(f"fields_from must be 'current' or 'color'; got {fields_from!r}")
    repair_config = repair_config or RepairConfig()
    clusterings = dict(clusterings or {})
    norm = get_normalization(normalization)
    size = int(test_set.images.shape[-1])
    model = copy.deepcopy(model).to(device).eval()  # the caller's model keeps its device and mode

    paths, metrics, eps_list, keep_list = _plan(model, norm, size, device, layers, metric, eps, keep,
                                                cluster_method, clusterings)

    def score(net: nn.Module, mode: str, normalize: Any, what: str) -> dict[str, Any]:
        t = time.perf_counter()
        result = evaluate(net, test_set, mode=mode, normalize=normalize, batch_size=batch_size, device=device,
                          progress=progress)
        timings[f"evaluate {what}"] = time.perf_counter() - t
        say(f"{what}: accuracy {result['accuracy']:.4f} on {result['n']} {mode} test images, "
            f"{result['params']:,} parameters")
        return result

    dataset = test_set.extra.get("display_name", test_set.name)
    model_name = (getattr(model, "achroma_arch", None) or {}).get("name")
    say(f"{model_name or type(model).__name__} on {dataset}: {len(test_set)} test images, "
        f"{len(train_set)} calibration images; layers {', '.join(paths)}; repair {', '.join(repairs)}")
    t = time.perf_counter()
    probe = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(seed))
    gray, fold_report = fold_to_gray(model, norm, border=border, example_input=probe.to(device))
    gray = gray.to(device).eval()
    timings["fold"] = time.perf_counter() - t
    say(f"folded {fold_report.layer} to 1 input channel (border={border}; max |logit difference| on gray "
        f"{fold_report.max_abs_logit_diff:.2e})")
    rows: list[Row] = []
    models: dict[str, nn.Module] = {"color": model, "folded": gray}
    if test_set.channels == 3:
        r = score(model, "color", norm, "color model, color images")
        rows.append(Row("color", "color model, color images", "color", "color", "none", r["accuracy"], r["loss"],
                        r["n"], r["params"]))
    else:
        rows.append(Row("color", "color model, color images (data set has no color)", "color", "color", "none",
                        None, None, 0, count_parameters(model)))
    r = score(model, "gray3", norm, "color model, gray images x3")
    rows.append(Row("color-gray3", "color model, gray images copied to 3 channels", "color", "gray3", "none",
                    r["accuracy"], r["loss"], r["n"], r["params"]))

    gray_norm = GRAY_NORMALIZATION
    r = score(gray, "gray", gray_norm, "folded gray model")
    rows.append(Row("folded", "folded gray model", "folded", "gray", "none", r["accuracy"], r["loss"], r["n"],
                    r["params"]))

    example = torch.zeros(1, 1, size, size, device=device)
    current = gray
    done: list[LayerResult] = []
    fields_kw = dict(fields_kw or {})
    for path, m, e, k in zip(paths, metrics, eps_list, keep_list):
        current, result = _merge_layer(current, model, path, m, e, k, clusterings.get(path), cluster_method,
                                       min_samples, imed_r, fields_from, norm, fields_kw, size, seed, example,
                                       device, progress, timings)
        done.append(result)
        how = f"eps {result.eps:.4g}" if result.eps is not None else f"{result.clustering.n_clusters} clusters"
        say(f"layer {path}: {result.channels_before} -> {result.channels_after} filters "
            f"({result.metric or 'given clustering'}, {result.method}, {how}); "
            f"{result.params_before:,} -> {result.params_after:,} parameters")
    models["merged"] = current
    r = score(current, "gray", gray_norm, "merged, no repair")
    rows.append(Row("merged", "merged gray model, no repair", "merged", "gray", "none", r["accuracy"], r["loss"],
                    r["n"], r["params"]))

    for kind in repairs:
        for base, label in (("merged", "merged gray model"), ("folded", "folded gray model (uncompressed)")):
            key = f"{base}+{kind}"
            if kind == "none":
                ref = next(row for row in rows if row.key == base)
                rows.append(Row(key, f"{label} + no repair", base, "gray", kind, ref.accuracy, ref.loss, ref.n,
                                ref.params))
                continue
            t = time.perf_counter()
            say(f"repair {kind} of the {base} model on {len(train_set)} images")
            fixed = repair_model(models[base], kind, train_set, repair_config, seed=seed, device=device,
                                 teacher=model, teacher_normalize=norm, reference=gray).eval()
            timings[f"repair {key}"] = time.perf_counter() - t
            models[key] = fixed
            r = score(fixed, "gray", gray_norm, f"{base} + {kind}")
            rows.append(Row(key, f"{label} + {kind}", key, "gray", kind, r["accuracy"], r["loss"], r["n"],
                            r["params"]))

    settings = {
        "layers": paths, "metric": metrics, "cluster_method": cluster_method, "eps": eps_list, "keep": keep_list,
        "min_samples": min_samples, "imed_r": imed_r, "repair": repairs, "repair_config": repair_config.to_dict(),
        "fields": {**_FIELD_DEFAULTS, **fields_kw, "size": size}, "seed": seed,
        "border": border, "fields_from": fields_from, "calibration_images": len(train_set),
        "test_images": len(test_set),
        "device": str(device), "threads": torch.get_num_threads(),
    }
    timings["total"] = time.perf_counter() - start
    say("done")
    return CompressionResult(dataset=dataset, model_name=model_name, normalization=norm.to_dict(), layers=done,
                             rows=rows, models=models, fold=fold_report, repairs=repairs, settings=settings,
                             timings=timings)


def _plan(model: nn.Module, norm: Any, size: int, device: torch.device, layers: Any, metric: Any, eps: Any,
          keep: Any, cluster_method: str, clusterings: dict[str, Clustering]) -> tuple[list, list, list, list]:
    """Check everything that can be checked before any work: (paths, metrics, eps, keep), one per layer."""
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        raise ValueError("the model has no Conv2d layer: nothing to fold or merge")
    channels = input_channels(model, size)
    if channels != 3:
        raise ValueError(f"compress needs a color model (3 input channels); this one takes {channels}")
    dtype = next(model.parameters()).dtype
    find_input_conv(model, norm(torch.rand(1, 3, size, size, dtype=dtype, device=device)))  # conv first?
    paths = resolve_layers(model, layers, size)
    metrics = [None if m is None else check_metric(m) for m in per_layer(metric, len(paths), "metric")]
    eps_list = per_layer(eps, len(paths), "eps", float)
    keep_list = per_layer(keep, len(paths), "keep", float)
    unknown = sorted(set(clusterings) - set(paths))
    if unknown:
        raise ValueError(f"clustering given for {', '.join(unknown)}, which is not among the layers {paths}")
    for path, m, e, k in zip(paths, metrics, eps_list, keep_list):
        if path in clusterings:
            _check_given(model, path, clusterings[path])
        else:
            if m is None:
                raise ValueError(f"layer {path}: no metric")
            check_cluster_setting(cluster_method, e, k, path)
    check_disjoint_groups(model, paths, torch.zeros(1, 3, size, size, dtype=dtype, device=device))

    return paths, metrics, eps_list, keep_list


def _merge_layer(current: nn.Module, color: nn.Module, path: str, metric: str | None, eps: float | None,
                 keep: float | None, given: Clustering | None, cluster_method: str, min_samples: int, imed_r: float,
                 fields_from: str, color_norm: Any, fields_kw: dict[str, Any], size: int, seed: int,
                 example: torch.Tensor, device: torch.device, progress: bool,
                 timings: dict[str, float]) -> tuple[nn.Module, LayerResult]:
    """Fields -> distances -> clustering -> merge for one layer of `current` (a new model is returned)."""
    conv = resolve_conv(current, path)
    before, params_before = conv.out_channels, count_parameters(current)
    rf = dist = None
    if given is not None:
        clustering, source, method, metric, used_eps, keep = (given, "given", given.method, None,
                                                              given.params.get("eps"), None)
    else:
        source, method = "computed", cluster_method
        t = time.perf_counter()
        net, net_norm = (current, GRAY_NORMALIZATION) if fields_from == "current" else (color, color_norm)
        rf = compute_receptive_fields(net, path, normalization=net_norm, size=size, seed=seed, progress=progress,
                                      **fields_kw)
        timings[f"fields {path}"] = time.perf_counter() - t
        kw = {"r": imed_r} if metric == "imed" else {}
        dist = pairwise_distances(rf.gray, metric, **kw)
        constraints = channel_constraints(current, path, example)
        if constraints.free:
            clustering, used_eps = _cluster(dist, cluster_method, eps, keep, path, min_samples)
        else:  # grouped convs / channel splits in the group: cluster within the blocks they allow
            clustering, used_eps = _cluster_constrained(dist, constraints, cluster_method, eps, keep, path,
                                                        min_samples)
        clustering.params.update(metric=metric, **kw)
        if keep is not None:
            clustering.params["keep"] = keep
    t = time.perf_counter()
    merged = merge_channels(current, path, clustering, example).to(device).eval()
    timings[f"merge {path}"] = time.perf_counter() - t
    after = resolve_conv(merged, path).out_channels
    return merged, LayerResult(path, metric, method, used_eps, keep, before, after, params_before,
                               count_parameters(merged), clustering, rf, dist, source)


def _check_given(model: nn.Module, path: str, clustering: Clustering) -> None:
    """A given clustering must be for this layer and label every one of its filters."""
    channels = resolve_conv(model, path).out_channels
    if clustering.layer not in (None, path):
        raise ValueError(f"the clustering given for layer {path} was made for layer {clustering.layer}")
    if clustering.n_filters != channels:
        raise ValueError(f"the clustering for layer {path} has {clustering.n_filters} labels but the layer has "
                         f"{channels} filters")
