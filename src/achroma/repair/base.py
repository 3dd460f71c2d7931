"""The repair protocol and its registry: what brings a folded, merged or grouped model back.

A repair is one small object per kind, registered under its name; `compress`, `sweep`, `transfer`
and `achroma group` look repairs up here, and the CLI's choices come from here. A step reads a
`RepairJob` (the images, the budget, the teacher and the uncompressed reference) and returns the
repaired model. Steps join with '+' ('ls-refit+distill'); trained ones take epochs ('finetune:3').
Adding a repair is one new file with a `Repair` subclass decorated by `register_repair`, imported in
`repair/__init__.py`, and its test.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Sequence

import torch
import torch.nn as nn


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
    0.9, cosine or one-cycle (`distill_schedule`), no weight decay), loss (`distill_loss`: 'mse' on
    logits, or 'kd': Hinton KD at `kd_temperature` plus the labels at weight 1 - `kd_alpha`) and
    teacher (`distill_teacher`: the color model on color images, or the uncompressed gray model on the
    student's own gray images), optionally (`distill_features` > 0) with every merged BN's outputs trained
    toward the mean of its clusters' outputs in the uncompressed gray model, the reference (a model with
    nothing merged gets plain distillation), then re-estimates the BN statistics on images drawn as in
    that training."""

    epochs: int = 1
    lr: float = 0.01
    momentum: float = 0.7
    batch_size: int = 32
    stats_batch_size: int = 256
    augment: bool = False
    stats_augment: bool = True
    distill_lr: float | str = 0.003  # or 'auto': the peak rate from a range test (distill/lr_range.py)
    distill_loss: str = "mse"
    distill_teacher: str = "color"  # color: the color model on color images; gray: the uncompressed gray model
    distill_schedule: str = "cosine"  # or onecycle
    distill_features: float = 0.0  # weight of the merged channels' feature term (distill/features.py); 0: off
    centripetal_until: float = 0.5  # centripetal: the fraction of the epoch after which merged clusters are equal
    refit_images: int = 2000
    refit_ridge: float | str = 1e-4  # or 'auto': chosen per layer on held-out calibration images
    finetune_lr: float = 0.01
    finetune_batch_size: int = 128
    finetune_weight_decay: float = 5e-4
    kd_temperature: float = 4.0
    kd_alpha: float = 0.5

    def __post_init__(self) -> None:
        from .refit import check_ridge

        check_ridge(self.refit_ridge)
        if self.distill_lr != "auto" and (isinstance(self.distill_lr, (str, bool)) or not self.distill_lr > 0):
            raise ValueError(f"distill_lr must be a positive number or 'auto'; got {self.distill_lr!r}")
        if not self.distill_features >= 0:
            raise ValueError(f"distill_features must be a weight >= 0; got {self.distill_features!r}")
        if isinstance(self.centripetal_until, bool) or not 0 < self.centripetal_until <= 1:
            raise ValueError(f"centripetal_until must be a fraction in (0, 1]; got {self.centripetal_until!r}")
        if self.distill_teacher not in ("color", "gray"):
            raise ValueError(f"distill_teacher must be color or gray, got {self.distill_teacher!r}")
        if self.distill_schedule not in ("cosine", "onecycle"):
            raise ValueError(f"distill_schedule must be cosine or onecycle, got {self.distill_schedule!r}")
        if self.distill_loss not in ("mse", "kd"):
            raise ValueError(f"distill_loss must be mse or kd, got {self.distill_loss!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RepairJob:
    """What a repair step may read. The student takes `mode` images normalized by `normalize`
    (a folded model: raw gray, 'none'); the teacher takes `teacher_mode` images by `teacher_normalize`."""

    images: Any  # an ImageDataset: the repair images
    config: RepairConfig = field(default_factory=RepairConfig)
    seed: int = 0
    device: torch.device | str = "cpu"
    mode: str = "gray"
    normalize: Any = "none"
    teacher: nn.Module | None = None  # the color model (compress) or the dense model (group)
    teacher_mode: str | None = None  # default: color when the images have color, else gray3
    teacher_normalize: Any = None
    reference: nn.Module | None = None  # the uncompressed model, whose outputs ls-refit reproduces
    merges: Any = None  # each merged group's (labels, representatives), by a conv that writes it
    validation: Any = None  # an ImageDataset held out of `images`: the guard scores every stage on it
    notes: dict[str, Any] = field(default_factory=dict)  # what the steps chose on the way (distill_lr: 'auto')

    @property
    def size(self) -> int:
        return int(self.images.images.shape[-1])

    def teacher_input_mode(self) -> str:
        return self.teacher_mode or ("color" if self.images.channels == 3 else "gray3")


class Repair:
    """One kind of repair. Subclasses set `name`, `help` (and `trained` when it takes epochs)."""

    name: ClassVar[str]
    help: ClassVar[str]
    trained: ClassVar[bool] = False  # takes an epoch count: 'finetune:3'

    def __call__(self, model: nn.Module, job: RepairJob) -> nn.Module:
        """Repair `model` (in place where it can) and return the repaired model, in eval mode."""
        raise NotImplementedError


_REGISTRY: dict[str, Repair] = {}


def register_repair(cls: type[Repair]) -> type[Repair]:
    if cls.name in _REGISTRY:
        raise ValueError(f"repair {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def get_repair(name: str) -> Repair:
    if name not in _REGISTRY:
        raise ValueError(f"unknown repair {name!r}; choose from {', '.join(_REGISTRY)} (or join several with '+')")
    return _REGISTRY[name]


def repair_names(trained: bool | None = None) -> tuple[str, ...]:
    return tuple(n for n, r in _REGISTRY.items() if trained is None or r.trained == trained)


def repair_help() -> str:
    return "; ".join(f"{r.name}: {r.help}" for r in _REGISTRY.values())


def parse_repair_step(step: str) -> tuple[str, int | None]:
    """'finetune:3' -> ('finetune', 3); 'bn-train' -> ('bn-train', None) (the config's epochs)."""
    name, _, epochs = step.partition(":")
    repair = get_repair(name)
    if not epochs:
        return name, None
    if not repair.trained:
        raise ValueError(f"repair {name!r} takes no epoch count (only {', '.join(repair_names(True))} do)")
    if not epochs.isdigit() or int(epochs) < 1:
        raise ValueError(f"repair {step!r}: the epoch count after ':' must be a positive integer")
    return name, int(epochs)


def check_repairs(repair: str | Sequence[str]) -> list[str]:
    """The repairs to compare, each once: a registered name, or a sequence joined by '+' ('ls-refit+distill':
    refit, then distill the refit model). Trained repairs may name their epochs ('finetune:3')."""
    kinds = ([p.strip() for p in repair.split(",") if p.strip()] if isinstance(repair, str) else list(repair)) or \
        ["none"]
    for k in kinds:
        for step in k.split("+"):
            parse_repair_step(step)
    if any("+" in k and "none" in k.split("+") for k in kinds):
        raise ValueError("'none' cannot be part of a repair sequence")
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"repair named more than once: {','.join(kinds)}")
    return kinds


def run_repair(model: nn.Module, kind: str, job: RepairJob) -> nn.Module:
    """A repaired copy of `model`: each '+'-joined step of `kind` in order (the input is untouched)."""
    return repair_with_guard(model, kind, job).model


@dataclass
class RepairOutcome:
    """What a repair sequence produced. With a validation split (`RepairJob.validation`), `stages` holds
    the accuracy on it before any step ('start') and after each step, and `model` is the best stage
    (`kept`; the earliest of equals): a step that made the model worse never reaches the user silently."""

    model: nn.Module
    stages: list[tuple[str, float]] = field(default_factory=list)
    kept: str = ""

    @property
    def worse_steps(self) -> list[str]:
        """Steps that left the model worse on the validation split than the stage before them."""
        return [s for (_, a0), (s, a1) in zip(self.stages, self.stages[1:]) if a1 < a0]

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [{"stage": s, "accuracy": a} for s, a in self.stages], "kept": self.kept,
                "worse_steps": self.worse_steps}


def repair_with_guard(model: nn.Module, kind: str, job: RepairJob) -> RepairOutcome:
    """Run the steps of `kind` on a copy of `model`; with `job.validation`, score every stage and keep the best."""
    import copy
    from dataclasses import replace

    out = copy.deepcopy(model).to(job.device)
    outcome = RepairOutcome(out, kept=kind)
    best = None
    if job.validation is not None:
        best = (_score(out, job), "start", copy.deepcopy(out))
        outcome.stages.append(("start", best[0]))
    for i, step in enumerate(kind.split("+")):
        name, epochs = parse_repair_step(step)
        step_job = job if epochs is None else replace(job, config=replace(job.config, epochs=epochs))
        out = get_repair(name)(out, step_job)
        if best is not None:
            stage = "+".join(kind.split("+")[:i + 1])
            acc = _score(out, job)
            outcome.stages.append((stage, acc))
            if acc > best[0]:
                best = (acc, stage, copy.deepcopy(out))
    if best is not None:
        outcome.kept, out = best[1], best[2]
    outcome.model = out.eval()
    return outcome


def _score(model: nn.Module, job: RepairJob) -> float:
    from ..training import evaluate

    return float(evaluate(model, job.validation, mode=job.mode, normalize=job.normalize, device=job.device,
                          progress=False)["accuracy"])
