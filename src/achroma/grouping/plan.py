"""Plain data for the grouped pointwise transform: one `LayerPlan` per converted 1x1 conv.

A plan says everything needed to rebuild the converted layer (path, channels, groups, stride,
bias, the two permutations) plus what was measured when it was chosen (kept energy of the chosen
and of the naive order, the output's spatial size for MAC counts). It is JSON as it stands
(`to_dict`/`from_dict`); a grouped model's checkpoint stores the list under "grouping".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..layers.grouped import grouped_conv_params, split_sizes


@dataclass
class LayerPlan:
    """How one dense 1x1 conv becomes a `PermutedGroupedConv`."""

    layer: str  # module path
    in_channels: int
    out_channels: int
    groups: int
    in_perm: list[int]  # position p of the grouped conv reads original input channel in_perm[p]
    out_perm: list[int]  # position q of the grouped conv writes original output channel out_perm[q]
    order: str = "energy"  # 'energy' or 'naive'
    stride: int = 1
    bias: bool = False
    kept_energy: float | None = None  # share of the dense weight's squared entries the chosen order keeps
    naive_kept_energy: float | None = None  # the same for consecutive groups in the original order
    out_pixels: int | None = None  # output height x width at the example input (MACs = weights x pixels)
    extra: dict[str, Any] = field(default_factory=dict)
    # group sizes when not the default split (a merge through the layer removed channels unevenly)
    in_splits: list[int] | None = None
    out_splits: list[int] | None = None

    @property
    def dense_params(self) -> int:
        return self.in_channels * self.out_channels + (self.out_channels if self.bias else 0)

    def _weights(self) -> int:
        if self.in_splits is None and self.out_splits is None:
            return grouped_conv_params(self.in_channels, self.out_channels, self.groups, False)
        ins = self.in_splits or split_sizes(self.in_channels, self.groups)
        outs = self.out_splits or split_sizes(self.out_channels, self.groups)
        return sum(i * o for i, o in zip(ins, outs))

    @property
    def grouped_params(self) -> int:
        return self._weights() + (self.out_channels if self.bias else 0)

    @property
    def dense_macs(self) -> int | None:
        return None if self.out_pixels is None else self.in_channels * self.out_channels * self.out_pixels

    @property
    def grouped_macs(self) -> int | None:
        return None if self.out_pixels is None else self._weights() * self.out_pixels

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("in_splits", "out_splits"):  # written only when set (merged through the layer)
            if d[key] is None:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerPlan":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    def summary(self) -> dict[str, Any]:
        """One row of the per-layer report (no permutations)."""
        return {"layer": self.layer, "in_channels": self.in_channels, "out_channels": self.out_channels,
                "groups": self.groups, "stride": self.stride, "order": self.order,
                "params_before": self.dense_params, "params_after": self.grouped_params,
                "macs_before": self.dense_macs, "macs_after": self.grouped_macs,
                "kept_energy": self.kept_energy, "naive_kept_energy": self.naive_kept_energy}
