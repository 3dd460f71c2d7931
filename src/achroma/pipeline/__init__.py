"""The whole method in one call: fold to gray, merge similar filters layer by layer, repair, score.

    >>> from achroma.pipeline import compress
    >>> result = compress(model, "cifar", train_set, test_set, layers="first:2", metric="mse,imed",
    ...                   keep=0.55, repair="bn-train")
    >>> [(r.key, r.accuracy) for r in result.rows]
"""
from .compress import CompressionResult, Row, compress
from .config import SELECTIONS, CompressConfig, LayerPlan
from .merging import LayerResult, MergeContext, merge_network, plan_layers
from .repairs import RepairConfig, repair_model
from .spec import REPAIRS, check_cluster_setting, check_repairs, per_layer, resolve_layers, split_list

__all__ = ["CompressionResult", "LayerResult", "Row", "compress", "CompressConfig", "LayerPlan", "SELECTIONS",
           "MergeContext", "merge_network", "plan_layers", "RepairConfig", "repair_model", "REPAIRS",
           "check_cluster_setting", "check_repairs", "per_layer", "resolve_layers", "split_list"]
