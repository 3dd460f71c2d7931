"""`transfer`: a color model to a gray model for a new grayscale task, fine-tuned and scored.

Stages: bring the target's images to the model's size; build the start (from scratch, the color
model on gray x3, the folded gray model, or the folded model merged to a budget: its filters are
chosen from the color model's weights, so no labels of the new task are needed); a new head for the
target's classes; fine-tune on the target's training split (early stopping on its validation split
where there is one); score the test split with the metrics its community reports.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from ..data import ImageDataset, fit_dataset, get_normalization, known_caveats
from ..fold import GRAY_NORMALIZATION
from ..models import create_model
from ..costs import count_macs
from ..deploy.latency import measure_latency
from ..report.metrics import classification_metrics, predict_proba
from ..surgery import replace_classifier
from ..training import (TrainConfig, balanced_class_weights, classification_loss, count_parameters, train,
                        weighted_classification_loss)
from ..training.distributed import current
from .config import TransferConfig

Log = Callable[[str], None]


@dataclass
class TransferResult:
    """The fine-tuned model and what was measured: test metrics, costs, history, seconds per stage."""

    model: nn.Module
    mode: str
    normalization: dict[str, list[float]]
    metrics: dict[str, Any]
    costs: dict[str, Any]
    history: dict[str, Any]
    timings: dict[str, float]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    start_info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: everything but the model."""
        return {k: v for k, v in vars(self).items() if k != "model"}


def transfer(color: nn.Module, color_norm: Any, train_set: ImageDataset, test_set: ImageDataset,
             config: TransferConfig | None = None, val_set: ImageDataset | None = None,
             log: Log | None = print) -> TransferResult:
    """Fine-tune a gray model for the task of `train_set` starting from the color model `color`
    (normalized by `color_norm`); score it on `test_set`. The input model is not modified."""
    config = config or TransferConfig()
    say = log or (lambda msg: None)
    timings: dict[str, float] = {}
    sets = {name: fit_dataset(d, config.geometry) for name, d in
            (("train", train_set), ("val", val_set), ("test", test_set)) if d is not None}
    size = int(sets["train"].images.shape[-1])
    t = time.perf_counter()
    model, mode, norm, start_info = build_start(color, color_norm, config, size, sets["train"])
    timings["start"] = time.perf_counter() - t
    head = replace_classifier(model, sets["train"].num_classes, size=size, seed=config.seed)
    say(f"{config.label}: new head {head} with {sets['train'].num_classes} classes; "
        f"{count_parameters(model):,} parameters")
    t = time.perf_counter()
    history = finetune(model, sets["train"], sets.get("val"), config, mode, norm)
    timings["finetune"] = time.perf_counter() - t
    t = time.perf_counter()
    probs = predict_proba(model, sets["test"], mode, norm, device=config.device)
    metrics = classification_metrics(probs, sets["test"].labels, sets["test"].classes)
    timings["evaluate"] = time.perf_counter() - t
    costs = measure_costs(model, mode, size, config)
    auc = "n/a" if metrics["auc"] is None else f"{metrics['auc']:.4f}"
    say(f"{config.label}: test accuracy {metrics['accuracy']:.4f}, AUC {auc}, "
        f"{costs['params']:,} parameters, {costs['macs']:,} MACs")
    notes = known_caveats(train_set)
    return TransferResult(model=model, mode=mode, normalization=get_normalization(norm).to_dict(), metrics=metrics,
                          costs=costs, history=history, timings=timings, notes=notes, start_info=start_info,
                          settings={**config.to_dict(), "head": head, "train_images": len(sets["train"]),
                                    "val_images": len(sets["val"]) if "val" in sets else 0,
                                    "test_images": len(sets["test"]), "threads": torch.get_num_threads()})


def build_start(color: nn.Module, color_norm: Any, config: TransferConfig, size: int,
                calibration: ImageDataset) -> tuple[nn.Module, str, Any, dict[str, Any]]:
    """(model, mode, normalization, info) the fine-tuning starts from; the color model is copied."""
    color = copy.deepcopy(color).to(config.device).eval()
    if config.start == "gray3":
        return color, "gray3", color_norm, {}
    if config.start == "scratch":
        arch = dict(getattr(color, "achroma_arch", None) or {})
        if "name" not in arch:
            raise ValueError("start 'scratch' rebuilds the architecture: the model needs `achroma_arch` "
                             "(build it with achroma.models.create_model or load one of our checkpoints)")
        name = arch.pop("name")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = create_model(name, **{**arch, "in_chans": 1})
        return model.to(config.device), "gray", GRAY_NORMALIZATION, {}
    from ..pipeline import Budget, CompressConfig, Compressor

    merge = CompressConfig(selection=config.selection, cluster_method=config.cluster, seed=config.seed,
                           device=config.device, progress=False)
    budget = None if config.target is None else Budget(**{config.by: config.target})
    comp = Compressor(merge, budget)
    gray, fold_report = comp.fold(color, color_norm, size)
    info: dict[str, Any] = {"fold": {"layer": fold_report.layer,
                                     "max_abs_logit_diff": fold_report.max_abs_logit_diff}}
    if budget is not None:
        comp.fit(color, color_norm, calibration, size=size)
        gray, summary = comp.model_, comp.summary()
        info["merge"] = {"macs": summary["macs"], "widths": comp.plan_.widths, "predicted": comp.plan_.predicted,
                         "seconds": summary["seconds"], "layers": summary["layers"]}
    return gray.to(config.device), "gray", GRAY_NORMALIZATION, info


def finetune(model: nn.Module, train_set: ImageDataset, val_set: ImageDataset | None, config: TransferConfig,
             mode: str, norm: Any) -> dict[str, Any]:
    """Train all weights on the target's labels (in place); the history of `training.train`."""
    if config.epochs == 0:
        return {"epochs": []}
    loss_fn = classification_loss
    if config.class_weights == "balanced":
        loss_fn = weighted_classification_loss(balanced_class_weights(train_set.labels, train_set.num_classes))
    # under torchrun each process takes its share of every batch: the global batch (and so the steps and the
    # images each step sees) stays the one a single process uses
    batch = max(1, min(config.batch_size, len(train_set)) // current().world_size)
    cfg = TrainConfig(epochs=config.epochs, batch_size=batch, lr=config.lr,
                      optimizer=config.optimizer, weight_decay=config.weight_decay, mode=mode, normalize=norm,
                      augment=config.augment, flip=config.flip, seed=config.seed, device=config.device,
                      patience=config.patience if val_set is not None else None, select_by=config.select_by)
    return train(model, train_set, cfg, loss_fn=loss_fn, val_set=val_set)


def measure_costs(model: nn.Module, mode: str, size: int, config: TransferConfig) -> dict[str, Any]:
    """Parameters, MACs (FlopCounter) and CPU latency at batch 1 (median, ms) of the fine-tuned model."""
    shape = (1 if mode == "gray" else 3, size, size)
    costs: dict[str, Any] = {"params": count_parameters(model), "macs": count_macs(model, shape)}
    if config.latency_runs > 0:
        lat = measure_latency(copy.deepcopy(model).cpu(), shape, batch=1, runs=config.latency_runs)
        costs["latency_b1_ms"] = lat["median_ms"]
        costs["latency_threads"] = torch.get_num_threads()
    return costs
