"""Layers and Torch-Pruning pruners the surgery needs beyond what the dependency graph maps alone.

`ChannelMapShortcut` replaces the CIFAR ResNets' option-A `PadShortcut`: a tracer sees the zero
padding as an element-wise op and would tie the narrow and the wide residual streams channel for
channel (16 -> 32 -> 64 all coupled), and symmetric padding cannot express which stream channel a
surviving input channel lands on once channels are removed. A fixed 0/1 channel-map matrix (a buffer,
not a parameter) can: merging averages its rows (it produces the wide stream) and sums its columns
(it reads the narrow one), exactly like a 1x1 conv, and its pruner keeps the two streams apart.

At run time the map is applied as what it is, a gather of at most a few input channels per output
channel (one, unless the wide stream was merged), so it costs what the option-A padding cost, not a
dense 1x1 conv's MACs. Only while the dependency graph is traced (`dense_shortcuts`) is it one
dense op, so that the tracer sees a single layer from input to output.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_pruning.pruner.function import BasePruningFunc, ConvPruner
from torchvision.models.shufflenetv2 import InvertedResidual as ShuffleNetBlock

from ..fold.border import BorderCorrectedConv2d, _identity, exporting
from ..grouping.module import PermutedGroupedConv, dense_grouped
from ..models.resnet_cifar import PadShortcut


_DENSE = contextvars.ContextVar("achroma_dense_shortcuts", default=False)


@contextlib.contextmanager
def dense_shortcuts() -> Iterator[None]:
    """Within this block every ChannelMapShortcut and PermutedGroupedConv runs as one dense op (for the tracer)."""
    token = _DENSE.set(True)
    try:
        with dense_grouped():
            yield
    finally:
        _DENSE.reset(token)


class ChannelMapShortcut(nn.Module):
    """Subsample by `stride`, then out[:, o] = sum_i matrix[o, i] * x[:, i] (a fixed, untrained map)."""

    def __init__(self, matrix: torch.Tensor, stride: int = 1):
        super().__init__()
        self.stride = int(stride)
        self.register_buffer("matrix", matrix.clone())
        self._plan: tuple | None = None

    @property
    def in_channels(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def out_channels(self) -> int:
        return int(self.matrix.shape[0])

    @classmethod
    def from_pad_shortcut(cls, pad: PadShortcut, dtype: torch.dtype = torch.float32,
                          device: torch.device | str = "cpu") -> "ChannelMapShortcut":
        """The exact equivalent of an option-A shortcut: input channel i lands on output i + extra // 2."""
        extra = pad.out_channels - pad.in_channels
        matrix = torch.zeros(pad.out_channels, pad.in_channels, dtype=dtype, device=device)
        matrix[torch.arange(pad.in_channels) + extra // 2, torch.arange(pad.in_channels)] = 1.0
        return cls(matrix, pad.stride)

    def gather_plan(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(index (O, K), weights (O, K) or None when all are 1): output o sums K input channels.

        Index `in_channels` points at an extra zero channel (outputs with fewer than K sources).
        Cached until the matrix is replaced or edited in place; built outside inference mode, so a
        plan made during a benchmark can still serve a training step.
        """
        key = _identity(self.matrix)
        if key is not None and self._plan is not None and self._plan[0] == key:
            return self._plan[1], self._plan[2]
        with torch.inference_mode(False):
            m = self.matrix.clone()
            nonzero = m != 0
            k = max(1, int(nonzero.sum(1).max()))
            cols = torch.argsort(nonzero.to(torch.int8), dim=1, descending=True, stable=True)[:, :k]
            vals = torch.gather(m, 1, cols)
            index = torch.where(vals != 0, cols, torch.full_like(cols, m.shape[1]))
            weights = None if bool(((vals == 0) | (vals == 1)).all()) else vals
        self._plan = None if key is None else (key, index, weights)
        return index, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if _DENSE.get() or x.device.type == "meta":  # meta tensors have no values to plan a gather from
            return F.conv2d(x, self.matrix.to(x.dtype)[:, :, None, None])
        if exporting():  # fake values: the plan of the eager pass before the export, else the dense map
            if self._plan is None:
                return F.conv2d(x, self.matrix.to(x.dtype)[:, :, None, None])
            index, weights = self._plan[1], self._plan[2]
        else:
            index, weights = self.gather_plan()
        b, _, h, w = x.shape
        padded = torch.cat([x, x.new_zeros(b, 1, h, w)], 1)
        picked = padded.index_select(1, index.flatten().to(x.device)).view(b, *index.shape, h, w)
        if weights is not None:
            picked = picked * weights.to(x.dtype).view(1, *weights.shape, 1, 1)
        return picked.sum(2)

    def _apply(self, fn, *args, **kwargs):
        self._plan = None
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        state["_plan"] = None
        return state

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def convert_shortcuts(model: nn.Module) -> nn.Module:
    """Replace every `PadShortcut` in `model` (in place) by its exact `ChannelMapShortcut`; returns model."""
    like = next(model.parameters(), torch.empty(0))
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PadShortcut):
                new = ChannelMapShortcut.from_pad_shortcut(child, dtype=like.dtype, device=like.device)
                new.train(child.training)
                setattr(parent, name, new)
    return model


def _keep(n: int, idxs: Sequence[int]) -> list[int]:
    drop = set(int(i) for i in idxs)
    return [i for i in range(n) if i not in drop]


class ChannelMapPruner(BasePruningFunc):
    """Rows of the map are output channels, columns input channels; the two are not coupled."""

    TARGET_MODULES = ChannelMapShortcut

    def prune_out_channels(self, layer: ChannelMapShortcut, idxs: Sequence[int]) -> nn.Module:
        layer.matrix = layer.matrix[_keep(layer.out_channels, idxs)].contiguous()
        return layer

    def prune_in_channels(self, layer: ChannelMapShortcut, idxs: Sequence[int]) -> nn.Module:
        layer.matrix = layer.matrix[:, _keep(layer.in_channels, idxs)].contiguous()
        return layer

    def get_out_channels(self, layer: ChannelMapShortcut) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: ChannelMapShortcut) -> int:
        return layer.in_channels


class BorderConvPruner(ConvPruner):
    """A conv pruner that also drops the pruned output channels of `border_kernel`."""

    TARGET_MODULES = BorderCorrectedConv2d

    def prune_out_channels(self, layer: BorderCorrectedConv2d, idxs: Sequence[int]) -> nn.Module:
        keep = _keep(layer.out_channels, idxs)
        super().prune_out_channels(layer, idxs)
        layer.border_kernel = layer.border_kernel[keep].contiguous()
        return layer


class PermutedGroupedPruner(BasePruningFunc):
    """`achroma group`'s grouped 1x1 conv, seen from outside as a dense conv in the original channel order.

    Torch-Pruning cannot map channels through its gather, grouped conv and scatter (it took the
    gather for an element-wise op, so channel c was read as grouped-conv position c: wrong groups,
    wrong slices). Traced under `dense_shortcuts` it is one conv; removing original input channel c
    drops c from the gather (renumbering in_perm) and its column from the group that reads it,
    output channels likewise. Inputs and outputs are not coupled. Every group must lose equally
    (`ChannelConstraints` has a partition for it; `remove_channels` checks again).
    """

    TARGET_MODULES = PermutedGroupedConv

    def prune_out_channels(self, layer: PermutedGroupedConv, idxs: Sequence[int]) -> nn.Module:
        return layer.remove_channels(idxs, "out")

    def prune_in_channels(self, layer: PermutedGroupedConv, idxs: Sequence[int]) -> nn.Module:
        return layer.remove_channels(idxs, "in")

    def get_out_channels(self, layer: PermutedGroupedConv) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: PermutedGroupedConv) -> int:
        return layer.in_channels


def customized_pruners() -> dict[type, BasePruningFunc]:
    """Fresh pruner instances for the layer types the dependency graph needs told about."""
    return {ChannelMapShortcut: ChannelMapPruner(), ChannelShuffle: ChannelMapPruner(),
            BorderCorrectedConv2d: BorderConvPruner(), PermutedGroupedConv: PermutedGroupedPruner()}


# ShuffleNet v2's channel shuffle ------------------------------------------------------------------
#
# torchvision's `channel_shuffle(x, 2)` is view(B, 2, C/2, H, W) -> transpose(1, 2) -> view(B, C, H, W):
# output channel 2i + g reads input channel g*C/2 + i. Torch-Pruning 1.6 cannot map it: its reshape
# index mapping only knows flatten-like 4D <-> 2D views, infers the 5-D view's channel count as 0 and
# fails with ZeroDivisionError while building the graph (so even the first conv, whose channels never
# reach a shuffle, could not be merged), and a transpose is seen as an element-wise op (identity).
# Beyond the tracer, the shuffle is positional: it interleaves two *equal* halves, and the next block
# splits its input with chunk(2) at C/2. Removing channels from one half only (which is what merging
# one branch's filters does) would shift every later channel to another half. So a merge cannot
# cross a shuffle with torchvision's own forward code. We make the shuffle an explicit, fixed channel
# routing instead: `ChannelShuffle` holds the shuffle's 0/1 matrix (one 1 per row: each output reads
# one input). Merging treats it like the option-A shortcut map: it *reads* the merged channels
# (columns summed: the merged channel feeds every output position its members fed) and its outputs
# stay as they were, so the chunk and the next blocks keep their widths. Its forward is a gather,
# not a matrix product, so it costs what the view/transpose cost.


def shuffle_matrix(channels: int, groups: int = 2) -> torch.Tensor:
    """The 0/1 matrix of torchvision's channel_shuffle: out[j] = in[(j % groups) * C/groups + j // groups]."""
    per = channels // groups
    j = torch.arange(channels)
    matrix = torch.zeros(channels, channels)
    matrix[j, (j % groups) * per + j // groups] = 1.0
    return matrix


class ChannelShuffle(ChannelMapShortcut):
    """A channel routing out[:, o] = x[:, src(o)], stored as a 0/1 matrix with one 1 per row."""

    def __init__(self, matrix: torch.Tensor):
        super().__init__(matrix, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ones = self.matrix.count_nonzero(dim=1)
        if bool((ones == 1).all()) and bool(((self.matrix == 0) | (self.matrix == 1)).all()):
            return x.index_select(1, self.matrix.argmax(dim=1))
        return super().forward(x)  # a general map (never produced by merging a shuffle)

    def is_plain_shuffle(self, groups: int = 2) -> bool:
        """Whether the map is still torchvision's channel_shuffle(x, groups) on a square input."""
        return (self.in_channels == self.out_channels and self.in_channels % groups == 0
                and torch.equal(self.matrix, shuffle_matrix(self.in_channels, groups).to(self.matrix)))


class ShuffleBlock(ShuffleNetBlock):
    """torchvision's ShuffleNet v2 block with its channel shuffle as a `ChannelShuffle` module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return self.shuffle(out)


def _block_channels(block: nn.Module) -> int:
    convs = [m for m in block.branch2.modules() if isinstance(m, nn.Conv2d)]
    return 2 * convs[-1].out_channels


def convert_shuffles(model: nn.Module, only: set[str] | None = None) -> nn.Module:
    """Make every ShuffleNet v2 block's channel shuffle an explicit `ChannelShuffle` (in place, exact).

    `only`: paths of the blocks to convert (default: all). Returns `model`.
    """
    for path, block in list(model.named_modules()):
        if type(block) is ShuffleNetBlock and (only is None or path in only):
            like = next(block.parameters())
            block.__class__ = ShuffleBlock
            block.shuffle = ChannelShuffle(shuffle_matrix(_block_channels(block)).to(like))
    return model


def restore_plain_shuffles(model: nn.Module) -> nn.Module:
    """Undo `convert_shuffles` on every block whose shuffle a merge left untouched (in place).

    Blocks whose shuffle now routes a merged channel keep their `ChannelShuffle` (its matrix is in
    the state dict; `resize_to_state_dict` rebuilds it on load).
    """
    for block in model.modules():
        if type(block) is ShuffleBlock and block.shuffle.is_plain_shuffle():
            del block.shuffle
            block.__class__ = ShuffleNetBlock
    return model
