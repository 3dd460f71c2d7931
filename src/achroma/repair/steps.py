"""The registered repairs: one class each, in the order the CLI lists them.

ls-refit solves, in closed form, for the weights of every layer that differs from the reference
(the consumers of merged channels, the merged producers, grouped pointwise convs) so that it
reproduces the reference's outputs there; bn-train and bn-stats touch the BN layers only; distill
trains every weight to regress the teacher's logits on the same images; finetune trains every
weight on the labels (finetune-kd: labels plus Hinton distillation from the teacher).
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn

from .base import Repair, RepairJob, register_repair


def _loader(job: RepairJob, batch_size: int, shuffle: bool = True, augment: bool = False, shard: bool = False):
    """The repair images in batches. shard: under torchrun, this process's share of every epoch (the same
    permutation in every process, every world_size-th image), each batch as big as `batch_size`."""
    from ..data import BatchLoader
    from ..training.distributed import current

    info = current() if shard else None
    return BatchLoader(job.images, batch_size=batch_size, mode=job.mode, normalize=job.normalize, shuffle=shuffle,
                       augment=augment, seed=job.seed, device=job.device, rank=info.rank if info else 0,
                       world_size=info.world_size if info else 1)


def _per_process(batch_size: int) -> int:
    """A global batch split over the processes, so that N processes step on the batches one would
    (BatchLoader deals each epoch's permutation out in turn: process r's j-th batch is the r-th share
    of the single process's j-th batch when the batch divides evenly)."""
    from ..training.distributed import current

    return max(1, batch_size // current().world_size)


def _calibration(job: RepairJob, augment: bool = False):
    """The refit's images (`refit_images` of the repair images, stratified by class) in batches of 256."""
    images = job.images
    if job.config.refit_images < len(images):
        images = images.stratified_subset(max(1, job.config.refit_images // max(1, len(images.classes))))
    return _loader(RepairJob(images, job.config, job.seed, job.device, job.mode, job.normalize), 256,
                   shuffle=False, augment=augment)


def _stats(model: nn.Module, job: RepairJob, augment: bool | None = None, required: bool = True) -> nn.Module:
    """BN running statistics re-estimated on images drawn as the weights were last trained on.

    required=False (after training): a model without BatchNorm (ConvNeXt's LayerNorms keep no statistics)
    is returned as it is; the bn-stats repair itself still refuses one."""
    from .bn import bn_recalibrate

    if not required and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model.eval()

    augment = job.config.stats_augment if augment is None else augment
    # each process averages its share of the batches; bn_recalibrate then averages over the processes
    return bn_recalibrate(model, _loader(job, job.config.stats_batch_size, augment=augment, shard=True)).eval()


@register_repair
class NoRepair(Repair):
    name, help = "none", "the model as merged"

    def __call__(self, model: nn.Module, job: RepairJob) -> nn.Module:
        return model


@register_repair
class LsRefit(Repair):
    name = "ls-refit"
    help = "least-squares refit of every layer that differs from the uncompressed model (no training)"

    def __call__(self, model: nn.Module, job: RepairJob) -> nn.Module:
        from ..grouping.module import PermutedGroupedConv
        from .grouped_refit import ls_refit_grouped
        from .refit import ls_refit

        if job.reference is None:
            raise ValueError("the ls-refit repair needs the uncompressed gray model as reference")
        batches = list(_calibration(job))
        reference = job.reference.to(job.device)
        grouped = [p for p, m in model.named_modules() if isinstance(m, PermutedGroupedConv)
                   and isinstance(reference.get_submodule(p), nn.Conv2d)]
        if grouped:  # dense 1x1 convs made grouped (achroma group): each group's best weights
            ls_refit_grouped(model, reference, batches, ridge=job.config.refit_ridge)
        if job.merges or not grouped:
            report = ls_refit(model, reference, batches, ridge=job.config.refit_ridge, size=job.size,
                              merges=job.merges)
            if job.config.refit_ridge == "auto" and report.layers:
                job.notes["refit_ridges"] = dict(zip(report.layers, report.ridges))
        return model.eval()


@register_repair
class BnTrain(Repair):
    name, help, trained = "bn-train", "the BN affines trained on the labels (the notebook's repair)", True

    def __call__(self, model: nn.Module, job: RepairJob) -> nn.Module:
        from ..training.distributed import average_buffers
        from .bn import bn_train

        loader = _loader(job, _per_process(job.config.batch_size), augment=job.config.augment, shard=True)

        def epochs():
            for epoch in range(job.config.epochs):
                loader.set_epoch(epoch)
                yield from loader

        torch.manual_seed(job.seed)
        model = bn_train(model, epochs(), epochs=1, lr=job.config.lr, momentum=job.config.momentum)
        return average_buffers(model)


@register_repair
class BnStats(Repair):
    name, help = "bn-stats", "BN running statistics re-estimated on the repair images"

    def __call__(self, model: nn.Module, job: RepairJob) -> nn.Module:
        return _stats(model, job)


@register_repair
class BnAlign(Repair):
    name = "bn-align"
    help = ("BN statistics re-estimated on the refit's images and the affines compensated: the same function, "
            "now also in train mode (before training)")

    def __call__(self, model: nn.Module, job: RepairJob) -> nn.Module:
        from .bn import bn_align

        # the images as the training that follows will draw them, so its batch statistics are these
        return bn_align(model, _calibration(job, augment=job.config.augment)).eval()


@register_repair
class Distill(Repair):
    name, help, trained = "distill", "every weight trained to match the teacher's logits (labels too with kd)", True

    def __call__(self, model: nn.Module, job: RepairJob) -> nn.Module:
        _distill(model, job, features=_feature_match(model, job))
        # the weights moved in train mode, so the running statistics lag behind them: re-estimate them
        # on images drawn as in this training (plain unless config.augment), not as in the original one
        return _stats(model, job, augment=job.config.augment, required=False)


@register_repair
class Centripetal(Repair):
    name, trained = "centripetal", True
    help = ("distill run on the uncompressed model while each merged cluster's channels are pulled together "
            "(equal from centripetal_until of the epoch on), then merged exactly; replaces the merged weights")

    def __call__(self, model: nn.Module, job: RepairJob) -> nn.Module:
        import copy

        from .tie import ClusterTie

        if job.config.distill_features:
            raise ValueError("the centripetal repair has no feature term: nothing is merged while it trains")
        if not job.merges:  # nothing merged: plain distillation
            return Distill()(model, job)
        if job.reference is None:
            raise ValueError("the centripetal repair needs the uncompressed gray model as reference")
        example = next(iter(_loader(job, 1, shuffle=False)))[0]
        tie = ClusterTie(copy.deepcopy(job.reference).to(job.device), job.merges, example,
                         until=job.config.centripetal_until)
        _distill(tie.model, job, step_hook=tie.step)
        merged = tie.merge()
        try:
            model.load_state_dict(merged.state_dict())
        except RuntimeError as err:
            raise ValueError("the centripetal repair's merge does not give the merged model's shapes (was a step "
                             f"before it changing widths?): {err}") from None
        return _stats(model, job, augment=job.config.augment, required=False)


def _distill(model: nn.Module, job: RepairJob, features=None, step_hook=None) -> None:
    """`model` trained in place to match the teacher's logits on the repair images, as `job.config` says."""
    from ..distill import distill
    from ..distill.lr_range import distill_lr_range
    from ..training import TrainConfig

    c = job.config
    teacher, t_mode, t_norm = job.teacher, job.teacher_input_mode(), job.teacher_normalize
    if c.distill_teacher == "gray":
        teacher, t_mode, t_norm = job.reference, job.mode, job.normalize
    if teacher is None:
        raise ValueError(f"the distill repair needs the {c.distill_teacher} model as teacher")
    train = TrainConfig(epochs=c.epochs, batch_size=_per_process(c.batch_size), lr=0.0, momentum=0.9, weight_decay=0.0,
                        schedule=c.distill_schedule, augment=c.augment, seed=job.seed, device=str(job.device))
    lr = c.distill_lr
    if lr == "auto":  # every process tests on the same images in the same order, so all choose alike
        found = distill_lr_range(model, teacher, job.images, replace(train, batch_size=c.batch_size),
                                 teacher_mode=t_mode, student_mode=job.mode, teacher_normalize=t_norm,
                                 student_normalize=job.normalize, loss=c.distill_loss, T=c.kd_temperature,
                                 alpha=c.kd_alpha)
        lr = job.notes["distill_lr"] = found.lr
    distill(model, teacher, job.images, replace(train, lr=lr), teacher_mode=t_mode, student_mode=job.mode,
            teacher_normalize=t_norm, student_normalize=job.normalize, loss=c.distill_loss,
            T=c.kd_temperature, alpha=c.kd_alpha, progress=False, features=features, step_hook=step_hook)


def _feature_match(model: nn.Module, job: RepairJob):
    """The feature term of a distillation (`distill_features` > 0): every BatchNorm that reads a merged
    conv's output, its channels' targets the clusters' means in the reference (as ls-refit's). None when
    it is off; no layers when nothing was merged."""
    from ..distill.features import FeatureMatch
    from .refit import merged_producers

    if not job.config.distill_features:
        return None
    if job.reference is None:
        raise ValueError("distill with distill_features needs the uncompressed gray model as reference")
    layers = {}
    if job.merges:
        example = next(iter(_loader(job, 1, shuffle=False)))[0]
        reference = job.reference.to(job.device)
        layers = {t.bn: t.members for t in merged_producers(model, reference, job.merges, example).values()}
    return FeatureMatch(job.reference, layers, job.config.distill_features)


class _Finetune(Repair):
    trained = True
    kd = False

    def __call__(self, model: nn.Module, job: RepairJob) -> nn.Module:
        from ..distill import distill
        from ..training import TrainConfig, train
        from ..training.distributed import average_buffers, current

        c = job.config
        # a small repair set still gets a step per epoch; split over the processes under torchrun
        batch = max(1, min(c.finetune_batch_size, len(job.images)) // current().world_size)
        config = TrainConfig(epochs=c.epochs, batch_size=batch, lr=c.finetune_lr, momentum=0.9,
                             weight_decay=c.finetune_weight_decay, schedule="cosine", mode=job.mode,
                             normalize=job.normalize, augment=True, seed=job.seed, device=str(job.device))
        if not self.kd:
            train(model, job.images, config, resume=False)
            return average_buffers(model).eval()
        if job.teacher is None:
            raise ValueError("the finetune-kd repair needs the color model as teacher")
        distill(model, job.teacher, job.images, config, teacher_mode=job.teacher_input_mode(), student_mode=job.mode,
                teacher_normalize=job.teacher_normalize, student_normalize=job.normalize, loss="kd",
                T=c.kd_temperature, alpha=c.kd_alpha, progress=False)
        return average_buffers(model).eval()


@register_repair
class Finetune(_Finetune):
    name, help = "finetune", "every weight trained on the labels (ordinary training, gently)"


@register_repair
class FinetuneKD(_Finetune):
    name, help, kd = "finetune-kd", "labels plus Hinton distillation from the teacher", True
