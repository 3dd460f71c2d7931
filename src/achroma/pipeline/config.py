"""How `compress` runs (one `CompressConfig`) and what it does to each layer (one `LayerPlan` per layer).

The config holds the choices a user makes once (which layers, how filters are compared and
clustered, which repairs); `plan_layers` turns it into one checked plan per layer before any work,
so a bad layer name or a clustering that does not fit fails in a second, not after the fields.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Sequence

from .repairs import RepairConfig

if TYPE_CHECKING:
    from ..clustering import Clustering



# The repair `compress --target-...` runs when none is named: the best one-epoch recipe measured on the
# ResNet-20 at half its MACs and parameters (docs/RESULTS.md, issue 22): one epoch of logit distillation
# from the color model under a one-cycle learning rate (the refit before it added 0.3 points alone and
# nothing on top of the one-cycle epoch; on DenseNets refit-then-train collapsed).
BUDGET_REPAIR = "distill"
BUDGET_REPAIR_CONFIG = {"distill_schedule": "onecycle"}
GUARD_MAX = 1000  # the guard's validation split holds at most this many images


@dataclass
class CompressConfig:
    """Everything `compress` needs besides the model and the data.

    layers: module paths and/or 'first:N' or 'all', in the order they are merged. metric, eps and
    keep: one value for all layers or one per layer ('mse,imed'); per layer exactly one of eps and
    keep unless a clustering is given for it. selection: what the filters are compared by: 'fields'
    (receptive fields, the method), or a baseline at the same group sizes: 'kernels' (the same
    metric on the folded kernels), 'weights' (k-means on raw weights), 'activations' (correlation
    of outputs on calibration images), 'random' (random clusters), 'l1' (Torch-Pruning's L1 filter
    pruning: keeps the largest, drops the rest, no merge). repair: one or several repairs to
    compare (see `repairs`); the first is the one `CompressionResult.final_model` carries.
    fields: keyword arguments of `compute_receptive_fields` (steps, restarts, ...). fields_from:
    'color' computes each layer's fields in the color model and clusters their luma (the
    notebook's way, the better merge in docs/RESULTS.md), 'current' in the gray model as merged so far.
    between: a repair run after each layer's merge, before the next layer is selected ('ls-refit':
    group by group, each clustered in the model as repaired so far; 'none': all merged, then repaired).
    merge: what becomes of a cluster: 'average' (the seed's: one filter at the members' BN-consistent
    mean, consumers' slices summed) or 'medoid' (the cluster's representative kept as it is, the
    others removed: pruning whose kept filters the clustering chooses; 'random' then prunes at random).
    guard: the share of the repair images held out (stratified, at most `GUARD_MAX` images) to score every
    stage of a repair sequence that trains; the best stage is kept and the report says which (0: off).
    layernorm: what a channel group normalized by a LayerNorm over its channels (ConvNeXt) gets: 'refuse'
    (the group stays whole: no merge of it is exact) or 'merge' (approximate: the norm's affine entries are
    averaged like BatchNorm's and its statistics are taken over the channels that remain; layer scales
    are folded into the layer before them first). Measured in docs/RESULTS.md (issue 24).
    """

    layers: str | Sequence[str] = "first:1"
    metric: str | Sequence[str] = "mse"
    cluster_method: str | None = None  # None: dbscan for chosen layers, kmeans with a budget
    eps: float | str | Sequence[float | None] | None = None
    keep: float | str | Sequence[float | None] | None = None
    selection: str | None = None  # None: fields for chosen layers, weights with a budget
    repair: str | Sequence[str] = "bn-train"
    repair_config: RepairConfig = field(default_factory=RepairConfig)
    fields: dict[str, Any] = field(default_factory=dict)
    fields_from: str = "color"
    between: str = "none"
    merge: str = "average"
    imed_r: float = 1.0
    min_samples: int = 1
    border: str = "exact"
    seed: int = 0
    batch_size: int | None = None
    device: str = "cpu"
    progress: bool = True
    guard: float = 0.1
    layernorm: str = "refuse"

    def __post_init__(self) -> None:
        if self.layernorm not in ("refuse", "merge"):
            raise ValueError(f"layernorm must be 'refuse' or 'merge'; got {self.layernorm!r}")
        if not 0 <= self.guard < 0.5:
            raise ValueError(f"guard must be a share of the repair images in [0, 0.5); got {self.guard}")
        if self.fields_from not in ("current", "color"):
            raise ValueError(f"fields_from must be 'current' or 'color'; got {self.fields_from!r}")
        if self.between not in ("none", "ls-refit", "bn-stats"):
            raise ValueError(f"between must be none, ls-refit or bn-stats; got {self.between!r}")
        if self.merge not in ("average", "medoid"):
            raise ValueError(f"merge must be 'average' or 'medoid'; got {self.merge!r}")
        from ..selection import get_selection

        if self.selection is not None:
            get_selection(self.selection)  # ValueError naming the known ones

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["repair_config"] = self.repair_config.to_dict()
        return out


@dataclass
class LayerPlan:
    """One layer's part of the run: its metric and clustering target, or a clustering given for it."""

    path: str
    metric: str | None
    eps: float | None
    keep: float | None
    clustering: Clustering | None = None  # given: no fields, distances or clustering are computed


# measured defaults: a budget merges every group, where k-means on the weights won the sweeps
# (docs/RESULTS.md); chosen layers keep the seed's receptive fields and DBSCAN
BUDGET_DEFAULTS = {"selection": "weights", "cluster_method": "kmeans"}
LAYER_DEFAULTS = {"selection": "fields", "cluster_method": "dbscan"}


def resolve_defaults(config: CompressConfig, budget: Any = None) -> CompressConfig:
    """`config` with its unset selection and clustering filled in for a budget or for chosen layers."""
    defaults = BUDGET_DEFAULTS if budget is not None else LAYER_DEFAULTS
    return replace(config, **{k: v for k, v in defaults.items() if getattr(config, k) is None})
