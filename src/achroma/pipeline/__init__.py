"""The method: fold a color model to gray, plan, merge (`Compressor`); repair and score (`compress`).

    >>> from achroma.pipeline import Budget, CompressConfig, Compressor, compress
    >>> comp = Compressor(CompressConfig(seed=0), Budget(macs=0.5)).fit(model, "cifar", train_set)
    >>> comp.model_, comp.plan_.widths                       # the merged gray model, every group's width
    >>> result = compress(model, "cifar", train_set, test_set, CompressConfig(repair="distill"),
    ...                   budget=Budget(macs=0.5))           # the same, repaired and scored beside the
    >>> [(r.key, r.accuracy) for r in result.rows]          # uncompressed gray model given the same repair
"""
from .budget import Budget, BudgetPlan
from .compress import CompressionResult, Row, compress
from .compressor import Compressor
from .config import CompressConfig, LayerPlan
from .merging import LayerResult, MergeContext, merge_network, plan_layers
from .planner import plan_budget, plan_widths
from .repairs import RepairConfig, repair_job, repair_model
from .spec import REPAIRS, check_cluster_setting, check_repairs, per_layer, resolve_layers, split_list

__all__ = ["Budget", "BudgetPlan", "CompressionResult", "Compressor", "LayerResult", "Row", "compress",
           "CompressConfig", "LayerPlan", "MergeContext", "merge_network", "plan_budget", "plan_layers",
           "plan_widths", "RepairConfig", "repair_job", "repair_model", "REPAIRS", "check_cluster_setting", "check_repairs",
           "per_layer", "resolve_layers", "split_list"]
