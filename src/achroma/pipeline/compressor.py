"""`Compressor`: the method as one object. Fold a color model to gray, plan, merge.

Built once from a `CompressConfig` (how channels are compared, clustered and merged) and either a
`Budget` (the share of MACs and/or parameters to keep over the whole network) or per-layer choices
in the config (layers and keep/eps, the seed's way); `fit` runs it on a color model, its input
normalization and calibration images, in the manner of a scikit-learn estimator:

    >>> comp = Compressor(CompressConfig(seed=0), Budget(macs=0.5)).fit(model, "cifar", train_set)
    >>> comp.model_          # the merged gray model (1 input channel, raw [0, 1] gray)
    >>> comp.plan_.widths    # the width of every channel group (plain data, `comp.summary()`)

No repair is applied: `compress` (the report), `sweep`, `transfer` and the demo repair and score
what `fit` returns. Nothing else in achroma folds for merging or plans widths.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Callable

import torch
import torch.nn as nn

from ..clustering import Clustering
from ..data import get_normalization
from ..fold import FoldReport, fold_to_gray
from ..costs import count_macs
from ..models.timm_models import fold_layer_scales
from ..surgery.graph import layernorm_merges
from ..surgery.groups import ChannelGraph, unequal_groups
from ..training import count_parameters
from .budget import Budget, BudgetPlan
from .config import CompressConfig, LayerPlan, resolve_defaults
from .merging import MergeContext, check_color_model, merge_network, plan_layers
from .spec import per_layer

Log = Callable[[str], None]
class Compressor:
    """Fold -> plan -> merge, built once, fitted on (color model, normalization, calibration images).

    Fitted attributes: `folded_` (the exact gray fold), `model_` (merged), `fold_` (FoldReport),
    `plan_` (BudgetPlan, with a budget), `groups_` (the folded model's channel groups the plan
    shares the budget among, with a budget), `layers_` (one LayerPlan each), `results_` (LayerResult
    each), `converted_` (grouped 1x1 convs made unequal so that their groups can shrink),
    `timings_` (seconds per stage), `layer_scales_` (blocks whose layer scale was folded into the layer
    before it: `layernorm='merge'` only).
    """

    def __init__(self, config: CompressConfig | None = None, budget: Budget | None = None) -> None:
        self.config = resolve_defaults(config or CompressConfig(), budget)
        self.budget = budget
        if budget is not None:
            if self.config.keep is not None or self.config.eps is not None:
                raise ValueError("a budget sets the share each group keeps: give no keep or eps with it")
            if self.config.layers not in ("all", None, "first:1", ()):
                raise ValueError("a budget plans every channel group: leave layers unset (skip leaves groups whole)")

    def fold(self, model: nn.Module, normalization: Any, size: int = 32) -> tuple[nn.Module, FoldReport]:
        """The exact gray fold of `model` (a copy), checked on a seeded probe of `size` x `size` images."""
        device = torch.device(self.config.device)
        probe = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(self.config.seed))
        gray, report = fold_to_gray(model, get_normalization(normalization), border=self.config.border,
                                    example_input=probe.to(device))
        return gray.to(device).eval(), report

    def fit(self, model: nn.Module, normalization: Any, calibration: Any = None, *, size: int | None = None,
            clusterings: dict[str, Clustering] | None = None, log: Log | None = None) -> "Compressor":
        """Fold `model` (color, normalized by `normalization`) to gray and merge it; returns self.

        `calibration`: an ImageDataset (data-driven selections, the sensitivity allocation, the
        'between' repairs); `size`: the input size (default: the calibration images', else 32).
        `clusterings` gives some layers' clusterings (chosen layers only). Errors are ValueErrors.
        """
        config = self.config
        start = time.perf_counter()
        size = size or (int(calibration.images.shape[-1]) if calibration is not None else 32)
        device = torch.device(config.device)
        norm = get_normalization(normalization)
        color = copy.deepcopy(model).to(device).eval()  # the caller's model keeps its device and mode
        self.timings_: dict[str, float] = {}
        plans = None
        if self.budget is None:
            plans = plan_layers(color, norm, size, config, clusterings)  # every check before any work
        else:
            if clusterings:
                raise ValueError("clusterings are given per layer; a budget plans every group")
            check_color_model(color, norm, size)
        t = time.perf_counter()
        gray, self.fold_ = self.fold(color, norm, size)
        self.folded_ = gray
        self.timings_["fold"] = time.perf_counter() - t
        if log:
            log(f"folded {self.fold_.layer} to 1 input channel (border={config.border}; max |logit difference| "
                f"on gray {self.fold_.max_abs_logit_diff:.2e})")
        example = torch.zeros(1, 1, size, size, device=device, dtype=next(gray.parameters()).dtype)
        self.plan_: BudgetPlan | None = None
        self.layer_scales_ = fold_layer_scales(gray) if config.layernorm == "merge" else []
        with layernorm_merges(config.layernorm):  # the planner and the merge see the same groups
            self._merge(gray, color, norm, size, example, calibration, plans, log)
        self.timings_["fit"] = time.perf_counter() - start
        return self

    def _merge(self, gray: nn.Module, color: nn.Module, norm: Any, size: int, example: torch.Tensor,
               calibration: Any, plans: list[LayerPlan] | None, log: Log | None) -> None:
        config, device = self.config, example.device
        graph = ChannelGraph(gray, example)
        gray, self.converted_ = unequal_groups(gray, example, graph)  # exact; only where equal groups block a group
        if self.converted_:
            graph = ChannelGraph(gray, example)
        if log and self.converted_:
            log(f"grouped 1x1 convs made unequal so that the channel groups they read can shrink: "
                f"{', '.join(self.converted_)}")
        if self.budget is not None:
            plans = self._plan(gray, graph, size, calibration, log)
        context = MergeContext(color, norm, size, example, device, calibration)
        self.layers_: list[LayerPlan] = plans
        self.model_, self.results_ = merge_network(gray, plans, config, context, self.timings_, log=log)
        self.size_ = size

    def _plan(self, gray: nn.Module, graph: ChannelGraph, size: int, calibration: Any,
              log: Log | None) -> list[LayerPlan]:
        """The budget's widths for every group of `gray` (traced as `graph`)."""
        from .allocation import PROBE_IMAGES, calibration_images
        from .search import SEARCH_IMAGES
        from .planner import plan_widths

        t = time.perf_counter()
        images = None
        if self.budget.allocation != "uniform":
            if calibration is None:
                raise ValueError(f"the {self.budget.allocation} allocation needs calibration images")
            n = SEARCH_IMAGES if self.budget.allocation == "search" else PROBE_IMAGES
            images = calibration_images(calibration, self.config.seed, n)
        self.groups_ = graph.groups()
        plan = plan_widths(gray, self.budget, size, images, self.groups_)
        self.plan_ = plan
        self.timings_["plan"] = time.perf_counter() - t
        if not plan.layers:
            raise ValueError(f"the folded model already keeps {plan.full['macs']:,.0f} MACs and "
                             f"{plan.full['params']:,.0f} parameters, within the budget: nothing to merge")
        if log:
            log(f"budget: {plan.predicted['macs'] / plan.full['macs']:.1%} of the MACs and "
                f"{plan.predicted['params'] / plan.full['params']:.1%} of the parameters of the folded model kept, "
                f"{len(plan.layers)} groups merged" + (f", skipped {', '.join(plan.skipped)}" if plan.skipped else ""))
        metrics = per_layer(self.config.metric if isinstance(self.config.metric, str) else None, len(plan.layers),
                            "metric")
        return [LayerPlan(root, m, None, keep) for root, m, keep in zip(plan.layers, metrics, plan.keep)]

    def summary(self) -> dict[str, Any]:
        """Plain data: the budget, the plan, each layer's merge, the costs reached, the seconds."""
        size = self.size_
        return {"budget": None if self.budget is None else self.budget.to_dict(),
                "plan": None if self.plan_ is None else self.plan_.summary(),
                "converted": self.converted_, "layers": [r.summary() for r in self.results_],
                "macs": count_macs(self.model_, (1, size, size)), "params": count_parameters(self.model_),
                "folded_macs": count_macs(self.folded_, (1, size, size)),
                "folded_params": count_parameters(self.folded_), "seconds": dict(self.timings_)}
