"""Apply one named repair (or a '+'-joined sequence) to a copy of a gray model, with a given budget.

bn-train and bn-stats touch the BN layers only; distill trains every weight of the gray model to
regress the color model's logits on the same images (the color model teaches its merged self);
ls-refit solves for the weights of the layers that read merged channels so that they reproduce the
uncompressed gray model's outputs there (closed form, no training; a no-op on the uncompressed model);
finetune trains every weight on the labels (finetune-kd: labels plus Hinton distillation from the
color model), with the augmentation and schedule of ordinary training. Trained repairs take an
epoch count after a colon ('finetune:3'); without one they train for `RepairConfig.epochs`.

The merged model and the uncompressed folded model get the *same* repair: same images, same
order, same epochs and step size, so that the table compares compression at a matched budget.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn as nn

from ..data import BatchLoader, ImageDataset
from ..repair import bn_recalibrate, bn_train, ls_refit
from ..repair.refit import Merges
from ..training import TrainConfig
from .spec import parse_repair_step


@dataclass(frozen=True)
class RepairConfig:
    """The repair budget. Defaults are the notebook's: one epoch of BN-only SGD, lr 0.01, momentum
    0.7, batch 32 (Keras' default batch size), no augmentation. bn-stats uses `stats_batch_size` and,
    by default, the training augmentation (crop + flip): BN statistics are part of what the model
    learned, and re-estimating them on plain images cost the demo model 9 points of color accuracy
    (0.732 -> 0.641 on 2,000 test images; 0.730 with augmented images).
    finetune (and finetune-kd) trains all weights like ordinary training, gently: SGD lr 0.01
    (`finetune_lr`, a tenth of training's), momentum 0.9, Nesterov, weight decay 5e-4, cosine, batch
    128, crop + flip; finetune-kd adds Hinton KD from the color model (T 4, soft weight 0.5).
    distill uses the same epochs, batch and augmentation with its own SGD (`distill_lr` 0.003: on the
    demo model's first-layer merge it beat 0.01 and 0.03 by 0.5 and 7 points; momentum
    0.9, cosine, no weight decay) and loss (`distill_loss`: 'mse' on logits or 'kd'), then
    re-estimates the BN statistics on images drawn as in that training."""

    epochs: int = 1
    lr: float = 0.01
    momentum: float = 0.7
    batch_size: int = 32
    stats_batch_size: int = 256
    augment: bool = False
    stats_augment: bool = True
    distill_lr: float = 0.003
    distill_loss: str = "mse"
    refit_images: int = 2000
    refit_ridge: float = 1e-4
    finetune_lr: float = 0.01
    finetune_batch_size: int = 128
    finetune_weight_decay: float = 5e-4
    kd_temperature: float = 4.0
    kd_alpha: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def repair_model(model: nn.Module, kind: str, train_set: ImageDataset, config: RepairConfig, seed: int = 0,
                 device: str | torch.device = "cpu", teacher: nn.Module | None = None,
                 teacher_normalize: Any = None, reference: nn.Module | None = None,
                 merges: Merges | None = None) -> nn.Module:
    """A repaired copy of gray model `model` (one of REPAIRS, or several joined by '+', applied in
    order; the input is untouched). 'distill' needs `teacher` (the color model) and its input
    normalization; 'ls-refit' needs `reference` (the uncompressed gray model) and, to refit the convs
    whose outputs were merged too, `merges` (each merged group's labels and representatives).

    The calibration images go in as raw [0, 1] gray (the folded model's input); the loader's shuffle
    is seeded by `seed` alone, so two calls with the same arguments see the same batches.
    """
    out = copy.deepcopy(model).to(device)
    for step in kind.split("+"):
        name, epochs = parse_repair_step(step)
        step_config = config if epochs is None else replace(config, epochs=epochs)
        out = _repair_step(out, name, train_set, step_config, seed, device, teacher, teacher_normalize, reference,
                           merges)
    return out


def _repair_step(out: nn.Module, kind: str, train_set: ImageDataset, config: RepairConfig, seed: int,
                 device: str | torch.device, teacher: nn.Module | None, teacher_normalize: Any,
                 reference: nn.Module | None, merges: Merges | None = None) -> nn.Module:
    """One repair of `out`, in place where it can be; returns the repaired model."""
    if kind == "ls-refit":
        if reference is None:
            raise ValueError("the ls-refit repair needs the uncompressed gray model as reference")
        per_class = max(1, config.refit_images // max(1, len(train_set.classes)))
        images = train_set.stratified_subset(per_class) if config.refit_images < len(train_set) else train_set
        loader = BatchLoader(images, batch_size=256, mode="gray", normalize="none", device=device)
        ls_refit(out, reference.to(device), loader, ridge=config.refit_ridge, size=int(train_set.images.shape[-1]),
                 merges=merges)
        return out.eval()
    if kind == "none":
        return out
    if kind == "bn-train":
        loader = BatchLoader(train_set, batch_size=config.batch_size, mode="gray", normalize="none", shuffle=True,
                             augment=config.augment, seed=seed, device=device)
        torch.manual_seed(seed)
        return bn_train(out, _epochs(loader, config.epochs), epochs=1, lr=config.lr, momentum=config.momentum)
    if kind == "bn-stats":
        return bn_recalibrate(out, _stats_loader(train_set, config, seed, device))
    if kind in ("finetune", "finetune-kd"):
        return _finetune(out, kind, train_set, config, seed, device, teacher, teacher_normalize)
    if kind == "distill":
        if teacher is None:
            raise ValueError("the distill repair needs the color model as teacher")
        from ..distill import distill

        train = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.distill_lr, momentum=0.9,
                            weight_decay=0.0, schedule="cosine", augment=config.augment, seed=seed,
                            device=str(device))
        distill(out, teacher, train_set, train, teacher_mode="color" if train_set.channels == 3 else "gray3",
                student_mode="gray", teacher_normalize=teacher_normalize, student_normalize="none",
                loss=config.distill_loss, progress=False)
        # The weights moved in train mode, so the running statistics lag behind them: re-estimate them on
        # images drawn as in this training (plain unless config.augment), not as in the original one.
        return bn_recalibrate(out, _stats_loader(train_set, config, seed, device, augment=config.augment)).eval()
    raise ValueError(f"unknown repair {kind!r}")


def _finetune(out: nn.Module, kind: str, train_set: ImageDataset, config: RepairConfig, seed: int,
              device: str | torch.device, teacher: nn.Module | None, teacher_normalize: Any) -> nn.Module:
    """All weights trained on the labels (finetune-kd: plus the color model's softened logits)."""
    from ..training import train

    batch = min(config.finetune_batch_size, len(train_set))  # a small repair set still gets a step per epoch
    train_config = TrainConfig(epochs=config.epochs, batch_size=batch, lr=config.finetune_lr,
                               momentum=0.9, weight_decay=config.finetune_weight_decay, schedule="cosine",
                               mode="gray", normalize="none", augment=True, seed=seed, device=str(device))
    if kind == "finetune":
        train(out, train_set, train_config, resume=False)
        return out.eval()
    if teacher is None:
        raise ValueError("the finetune-kd repair needs the color model as teacher")
    from ..distill import distill

    distill(out, teacher, train_set, train_config, teacher_mode="color" if train_set.channels == 3 else "gray3",
            student_mode="gray", teacher_normalize=teacher_normalize, student_normalize="none", loss="kd",
            T=config.kd_temperature, alpha=config.kd_alpha, progress=False)
    return out.eval()


def _stats_loader(train_set: ImageDataset, config: RepairConfig, seed: int, device: Any,
                  augment: bool | None = None) -> BatchLoader:
    """Raw gray batches for BN statistics, seeded shuffle. Statistics must match the images the weights
    were last trained on: crop + flip (`stats_augment`) for a model as it came from training."""
    return BatchLoader(train_set, batch_size=config.stats_batch_size, mode="gray", normalize="none", shuffle=True,
                       augment=config.stats_augment if augment is None else augment, seed=seed, device=device)


def _epochs(loader: BatchLoader, epochs: int):
    """All batches of `epochs` epochs, each with its own seeded shuffle (BatchLoader.set_epoch)."""
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        yield from loader
