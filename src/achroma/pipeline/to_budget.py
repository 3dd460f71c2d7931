"""Merge a whole folded network down to a budget in one call: plan the widths, merge every group.

What `sweep` does for each (budget, method) point and `transfer` does for its merged start: widths
from `plan_budget` (the same share kept in each channel group), then `merge_network` with the given
selection; no repair (the caller repairs or fine-tunes).
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Sequence

import torch
import torch.nn as nn

from ..data import ImageDataset, get_normalization
from ..report.costs import count_macs
from ..report.table import stage_seconds
from .allocation import calibration_images
from .budget import plan_budget
from .config import CompressConfig
from .merging import MergeContext, merge_network, plan_layers


def merge_to_budget(color: nn.Module, norm: Any, gray: nn.Module, target: float, config: CompressConfig,
                    by: str = "macs", skip: Sequence[str] = (), size: int = 32, allocation: str = "uniform",
                    calibration: ImageDataset | None = None, device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """(merged gray model, info) keeping `target` of the folded model's `by` ('macs' or 'params').

    `color` and `norm`: the color model and its normalization; `gray`: its fold. `config` says how
    groups are compared and clustered (selection, cluster method, merge, seed); its layers, keep,
    eps and repair are set here. `calibration` (gray-able images) feeds data-driven selections and
    the sensitivity allocation. info: MACs, widths, predicted costs, seconds, per-layer summaries.
    """
    norm = get_normalization(norm)
    images = None
    if allocation == "sensitivity":
        if calibration is None:
            raise ValueError("the sensitivity allocation needs calibration images")
        images = calibration_images(calibration, config.seed)
    plan = plan_budget(color, norm, target, by, skip=skip, size=size, allocation=allocation, calibration=images)
    if not plan.layers:
        raise ValueError(f"the folded model already keeps {plan.full['macs']:,.0f} MACs and "
                         f"{plan.full['params']:,.0f} parameters, within the target: nothing to merge")
    merge = CompressConfig(**{**asdict(config), "repair_config": config.repair_config, "layers": plan.layers,
                              "keep": plan.keep, "eps": None, "repair": "none", "progress": False})
    plans = plan_layers(color, norm, size, merge)
    timings: dict[str, float] = {}
    context = MergeContext(color, norm, size, torch.zeros(1, 1, size, size, device=device), torch.device(device),
                           calibration)
    merged, layers = merge_network(gray, plans, merge, context, timings)
    info = {"macs": count_macs(merged, (1, size, size)), "widths": plan.widths, "predicted": plan.predicted,
            "seconds": stage_seconds(timings), "layers": [ly.summary() for ly in layers]}
    return merged.eval(), info
