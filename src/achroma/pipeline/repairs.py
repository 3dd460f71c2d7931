"""Apply one named repair (or a '+'-joined sequence) to a copy of a gray model, with a given budget.

The repairs themselves live in `achroma.repair` (one registered class each, `repair/steps.py`);
this is how the method calls them on a folded gray model: raw gray images in, the color model as
teacher on the same images, the uncompressed folded model as ls-refit's reference.

The merged model and the uncompressed folded model get the *same* repair: same images, same
order, same epochs and step size, so that the table compares compression at a matched budget.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..data import ImageDataset
from ..repair import RepairConfig, RepairJob, run_repair
from ..repair.refit import Merges

__all__ = ["RepairConfig", "repair_job", "repair_model"]


def repair_job(train_set: ImageDataset, config: RepairConfig, seed: int = 0, device: str | torch.device = "cpu",
               teacher: nn.Module | None = None, teacher_normalize: Any = None, reference: nn.Module | None = None,
               merges: Merges | None = None, validation: ImageDataset | None = None) -> RepairJob:
    """The `RepairJob` of a folded gray model: raw gray images in, `teacher` (the color model) on the same
    images normalized by `teacher_normalize`, `reference` (the uncompressed gray model) for ls-refit and
    the gray teacher, `merges` (each merged group's labels and representatives) to refit the convs whose
    outputs were merged, `validation` (held out of `train_set`) for the guard."""
    return RepairJob(train_set, config, seed, device, "gray", "none", teacher, None, teacher_normalize, reference,
                     merges, validation)


def repair_model(model: nn.Module, kind: str, train_set: ImageDataset, config: RepairConfig, seed: int = 0,
                 device: str | torch.device = "cpu", teacher: nn.Module | None = None,
                 teacher_normalize: Any = None, reference: nn.Module | None = None,
                 merges: Merges | None = None) -> nn.Module:
    """A repaired copy of gray model `model` (a registered repair, or several joined by '+', applied in
    order; the input is untouched); the arguments as `repair_job`'s.

    The calibration images go in as raw [0, 1] gray (the folded model's input); the loader's shuffle
    is seeded by `seed` alone, so two calls with the same arguments see the same batches.
    """
    return run_repair(model, kind, repair_job(train_set, config, seed, device, teacher, teacher_normalize, reference,
                                              merges))
