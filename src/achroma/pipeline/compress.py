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
from typing import Any, Callable

import torch
import torch.nn as nn

from ..clustering import Clustering
from ..data import ImageDataset, get_normalization
from ..fields import compute_receptive_fields
from ..fold import GRAY_NORMALIZATION, FoldReport
from ..training import count_parameters, evaluate
from .budget import Budget
from .compressor import Compressor
from .config import GUARD_MAX, CompressConfig
from .merging import LayerResult, plan_layers, refit_merges
from .repairs import repair_job
from .spec import check_repairs, split_list

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
    """`log` with each message stamped by the seconds since `start`."""
    def say(msg: str) -> None:
        if log is not None:
            log(f"[{time.perf_counter() - start:6.1f}s] {msg}")
    return say


class _Scorer:
    """Scores models on the test images, logs each score and records its seconds in `timings`."""

    def __init__(self, test_set: ImageDataset, config: CompressConfig, device: torch.device,
                 timings: dict[str, float], say: Log) -> None:
        self.test_set, self.config, self.device, self.timings, self.say = test_set, config, device, timings, say
        self.rows: list[Row] = []

    def __call__(self, key: str, label: str, net: nn.Module, model: str, mode: str, normalize: Any,
                 repair: str = "none") -> Row:
        t = time.perf_counter()
        r = evaluate(net, self.test_set, mode=mode, normalize=normalize, batch_size=self.config.batch_size,
                     device=self.device, progress=self.config.progress)
        self.timings[f"evaluate {key}"] = time.perf_counter() - t
        self.say(f"{label}: accuracy {r['accuracy']:.4f} on {r['n']} {mode} test images, {r['params']:,} parameters")
        row = Row(key, label, model, mode, repair, r["accuracy"], r["loss"], r["n"], r["params"])
        self.rows.append(row)
        return row


def compress(model: nn.Module, normalization: str | dict | Any, train_set: ImageDataset, test_set: ImageDataset,
             config: CompressConfig | None = None, *, budget: Budget | None = None,
             clusterings: dict[str, Clustering] | None = None, log: Log | None = print) -> CompressionResult:
    """Fold `model` (color, normalized by `normalization`) to gray, merge (the layers `config` names, or
    every group to `budget`), repair, score. `train_set` feeds the repairs (and data-driven selections);
    `test_set` scores every row. `clusterings` gives some layers' clusterings (no fields are computed
    for them). Stage errors (unknown layer, bad clustering, one cluster, first layer not a conv) are
    ValueErrors, raised before any long work.
    """
    compressor = Compressor(config, budget)
    config = compressor.config
    start = time.perf_counter()
    say = _clock(log, start)
    device = torch.device(config.device)
    repairs = check_repairs(config.repair)
    norm = get_normalization(normalization)
    size = int(test_set.images.shape[-1])
    model = copy.deepcopy(model).to(device).eval()  # the caller's model keeps its device and mode
    if budget is None:
        plan_layers(model, norm, size, config, clusterings)  # fail in a second, before scoring anything

    dataset = test_set.extra.get("display_name", test_set.name)
    model_name = (getattr(model, "achroma_arch", None) or {}).get("name")
    what = (f"budget {', '.join(f'{v:.0%} of the {k}' for k, v in budget.goals.items())}" if budget is not None
            else f"layers {', '.join(split_list(config.layers))}")
    say(f"{model_name or type(model).__name__} on {dataset}: {len(test_set)} test images, "
        f"{len(train_set)} calibration images; {what}; selection {config.selection}; repair {', '.join(repairs)}")
    compressor.fit(model, norm, train_set, size=size, clusterings=clusterings, log=say)
    timings: dict[str, float] = dict(compressor.timings_)
    gray, merged, done = compressor.folded_, compressor.model_, compressor.results_
    score = _Scorer(test_set, config, device, timings, say)
    if test_set.channels == 3:
        score("color", "color model, color images", model, "color", "color", norm)
    else:
        score.rows.append(Row("color", "color model, color images (data set has no color)", "color", "color",
                              "none", None, None, 0, count_parameters(model)))
    score("color-gray3", "color model, gray images copied to 3 channels", model, "color", "gray3", norm)
    score("folded", "folded gray model", gray, "folded", "gray", GRAY_NORMALIZATION)
    score("merged", "merged gray model, no repair", merged, "merged", "gray", GRAY_NORMALIZATION)
    models = {"color": model, "folded": gray, "merged": merged}
    merges = refit_merges([ly.summary() for ly in done])
    guards, choices = _repair_all(models, repairs, score, train_set, config, norm, device, timings, say, merges)

    plans = compressor.layers_
    settings = {**config.to_dict(), "layers": [p.path for p in plans], "metric": [p.metric for p in plans],
                "eps": [p.eps for p in plans], "keep": [p.keep for p in plans], "repair": repairs,
                "fields": {**_FIELD_DEFAULTS, **config.fields, "size": size},
                "budget": None if budget is None else budget.to_dict(),
                "plan": None if compressor.plan_ is None else compressor.plan_.summary(),
                "converted": compressor.converted_, "guard": guards, "repair_choices": choices,
                "calibration_images": len(train_set), "test_images": len(test_set), "device": str(device),
                "threads": torch.get_num_threads()}
    settings.pop("progress")
    timings["total"] = time.perf_counter() - start
    say("done")
    return CompressionResult(dataset=dataset, model_name=model_name, normalization=norm.to_dict(), layers=done,
                             rows=score.rows, models=models, fold=compressor.fold_, repairs=repairs,
                             settings=settings, timings=timings)


def guard_split(train_set: ImageDataset, share: float, seed: int = 0) -> tuple[ImageDataset, ImageDataset | None]:
    """(repair images, the guard's validation images): `share` of `train_set`, stratified, held out."""
    per_class = min(round(share * len(train_set)), GUARD_MAX) // max(1, train_set.num_classes)
    if share <= 0 or per_class < 1:
        return train_set, None
    held, rest = train_set.stratified_split(per_class, seed=seed)
    return rest, held


def _repair_all(models: dict[str, nn.Module], repairs: list[str], score: _Scorer, train_set: ImageDataset,
                config: CompressConfig, norm: Any, device: torch.device, timings: dict[str, float],
                say: Log, merges: dict[str, tuple[list[int], list[int]]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each repair, given alike to the merged and the uncompressed folded model; rows and models added.
    Sequences with a trained step are guarded. Returns each guarded row's stages and the stage kept, and
    each row's automatic choices (`RepairJob.notes`)."""
    from ..repair import get_repair, parse_repair_step, repair_with_guard

    guards: dict[str, Any] = {}
    choices: dict[str, Any] = {}
    for kind in repairs:
        trained = any(get_repair(parse_repair_step(s)[0]).trained for s in kind.split("+"))
        images, held = guard_split(train_set, config.guard if trained else 0.0, config.seed)
        for base, label in (("merged", "merged gray model"), ("folded", "folded gray model (uncompressed)")):
            key = f"{base}+{kind}"
            if kind == "none":
                ref = next(row for row in score.rows if row.key == base)
                score.rows.append(Row(key, f"{label} + no repair", base, "gray", kind, ref.accuracy, ref.loss,
                                      ref.n, ref.params))
                continue
            t = time.perf_counter()
            say(f"repair {kind} of the {base} model on {len(images)} images"
                + (f" ({len(held)} more held out to guard it)" if held is not None else ""))
            job = repair_job(images, config.repair_config, seed=config.seed, device=device, teacher=models["color"],
                             teacher_normalize=norm, reference=models["folded"],
                             merges=merges if base == "merged" else None, validation=held)
            outcome = repair_with_guard(models[base], kind, job)
            models[key] = outcome.model
            if job.notes:  # what 'auto' settings chose (the learning rate, each layer's ridge)
                choices[key] = job.notes
            timings[f"repair {key}"] = time.perf_counter() - t
            if held is not None:
                guards[key] = {**outcome.to_dict(), "images": len(held)}
                if outcome.kept != kind:
                    say(f"guard: {key} kept stage '{outcome.kept}': "
                        + ", ".join(f"{s} {a:.4f}" for s, a in outcome.stages) + f" on {len(held)} held-out images")
            score(key, f"{label} + {kind}", models[key], key, "gray", GRAY_NORMALIZATION, repair=kind)
    return guards, choices
