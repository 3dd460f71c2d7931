"""ONNX export of any model the tool loads or makes, checked by onnx.checker and ONNX Runtime.

Which exporter: `torch.onnx.export(..., dynamo=True)`, the torch.export-based exporter (the default
since PyTorch 2.9; it translates with `onnxscript`). On torch 2.14 the legacy TorchScript exporter
(`dynamo=False`) is deprecated ("will be removed") and, with a dynamic batch axis, fails on our own
`seed-densenet` family: it loses the static spatial size behind the folded first conv and then
refuses `adaptive_avg_pool2d` to 2x2 ("input size not accessible"). The dynamo exporter exported
every family we tried (seed-densenet-tiny, densenet-bc-100, resnet-cifar-20 with option-A
`ChannelMapShortcut`s, tv:resnet18, tv:densenet121, tv:mobilenet_v2 with depthwise convs), color,
folded and merged, with a dynamic batch axis, and ONNX Runtime matched PyTorch to ~1e-7. It is
slower (2-9 s a model on one CPU core, against under 0.5 s) and emits opset 18 or later only
(earlier opsets fail in its version converter), hence `MIN_OPSET = 18`.

The graph has one input `input` (batch, C, H, W) float32, batch dynamic, H and W fixed to the size
it was exported at, and one output `logits` (batch, classes). What a caller must do to an image
before feeding it is written into the model's metadata (`metadata_props`): `achroma.input` holds a
JSON input spec (channels, size, color mode, scaling, normalization), `achroma.classes` the class
names when known, `achroma.check` how ONNX Runtime agreed with PyTorch.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .extra import require_onnx

DEFAULT_OPSET = 18
MIN_OPSET = 18
#: Largest max |logit difference| between ONNX Runtime and PyTorch an export may have.
DEFAULT_TOLERANCE = 1e-4
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class ExportError(ValueError):
    """The model could not be exported, or the export disagrees with PyTorch (nothing is written)."""


@dataclass
class InputSpec:
    """What an image must become before the exported model reads it (written into the ONNX metadata)."""

    channels: int
    height: int
    width: int
    mode: str  # color | gray | gray3
    normalization: dict[str, list[float]]
    classes: list[str] | None = None

    def describe(self) -> dict[str, Any]:
        color = {"color": "RGB", "gray": "gray, luma 0.2989 R + 0.5870 G + 0.1140 B",
                 "gray3": "gray (luma 0.2989 R + 0.5870 G + 0.1140 B) copied to 3 channels"}[self.mode]
        return {
            "name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", "batch": "dynamic",
            "channels": self.channels, "height": self.height, "width": self.width, "mode": self.mode,
            "color": color, "scale": "pixel / 255 (values in [0, 1])",
            "normalization": self.normalization,
            "preprocess": "x = (pixel / 255 - mean[c]) / std[c] per channel c",
            "output": {"name": OUTPUT_NAME, "meaning": "logits (batch, classes); softmax for probabilities"},
        }

    def metadata(self) -> dict[str, str]:
        meta = {"achroma.input": json.dumps(self.describe(), sort_keys=True)}
        if self.classes:
            meta["achroma.classes"] = json.dumps(list(self.classes))
        return meta


def input_spec(model: nn.Module, mode: str, normalization: Any, size: tuple[int, int],
               classes: list[str] | None = None) -> InputSpec:
    """The `InputSpec` of `model` fed `mode` images of `size` (H, W) normalized by `normalization`."""
    from ..data import get_normalization, mode_channels
    from ..training.evaluate import first_conv_in_channels

    channels = first_conv_in_channels(model) or mode_channels(mode)
    if channels != mode_channels(mode):
        raise ValueError(f"the model reads {channels} channel(s) but mode {mode!r} gives {mode_channels(mode)}; "
                         f"pass --mode {'gray' if channels == 1 else 'color'}")
    norm = get_normalization(normalization).for_channels(channels)
    return InputSpec(channels, int(size[0]), int(size[1]), mode, norm.to_dict(), list(classes) if classes else None)


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int], opset: int = DEFAULT_OPSET,
                metadata: dict[str, str] | None = None, fuse: bool = True) -> bytes:
    """The serialized ONNX model of `model` for inputs (batch, *input_shape), batch dynamic, checked.

    Exports a float32 CPU copy in eval mode (the input model is not modified), adds `metadata` to
    `metadata_props` and runs `onnx.checker.check_model(full_check=True)`. Raises ExportError.
    With `fuse` (default), conv -> BN pairs are folded first (`achroma.deploy.fuse`): ONNX Runtime
    fuses plain pairs itself, but not the fold's first conv, whose border map sits between them;
    a model torch.fx cannot trace is exported unfused (`achroma.fuse` in the metadata says which).
    Then the fold's border correction goes to the first conv's input (`BorderMaskConv2d`), so that
    ONNX Runtime keeps that conv fused with its activation, in its blocked layout.
    """
    onnx, _ = require_onnx()
    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset}: the exporter (torch.onnx dynamo) writes opset {MIN_OPSET} or later")
    net = copy.deepcopy(model).float().cpu().eval()
    fuse_note = "off"
    if fuse:
        from ..fold.border import to_mask_convs
        from .fuse import fuse_conv_bn

        try:
            net, fuse_report = fuse_conv_bn(net)
            fuse_note = fuse_report.summary()
        except ValueError as err:
            fuse_note = f"not fused: {err}"
        if to_mask_convs(net):
            fuse_note += "; the fold's border correction as a mask input channel of the first conv"
    metadata = {**(metadata or {}), "achroma.fuse": fuse_note}
    example = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # plans the channel maps' gathers and the folded conv's border map, which the
        net(example)       # export then records as constants (fake tensors during export have no values)
    batch = torch.export.Dim("batch")
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(net, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},),
                                        opset_version=opset, verbose=False, optimize=True)
        proto = program.model_proto
    except Exception as err:  # the exporter raises many kinds; one line for the CLI
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"torch.onnx.export failed: {type(err).__name__}: {first}") from err
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise ExportError(f"asked for opset {opset}, the exporter wrote opset {got}")
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim0.dim_param:
        raise ExportError("the exported model's batch axis is not dynamic")
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "Exported by achroma; the input spec is in metadata_props['achroma.input']."
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as err:
        raise ExportError(f"onnx.checker rejected the export: {str(err).strip().splitlines()[0]}") from err
    return proto.SerializeToString()


def ort_session(onnx_model: bytes, threads: int = 1):
    """An ONNX Runtime CPU session with `threads` intra-op threads, one inter-op thread, all graph optimizations."""
    _, ort = require_onnx("ONNX Runtime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def compare_with_torch(onnx_model: bytes, model: nn.Module, inputs: torch.Tensor, batch_size: int = 64,
                       threads: int = 1) -> dict[str, Any]:
    """ONNX Runtime against PyTorch on `inputs` (already in the model's input form).

    PyTorch runs up to 256 images at a time (few shapes: its first call of a shape is slow); ONNX
    Runtime runs them in batches of `batch_size`, then the first image alone (batch 1: the dynamic
    axis at its smallest). Returns max |logit difference|, max |logit| (its scale), and how many
    predictions agree.
    """
    session = ort_session(onnx_model, threads)
    net = copy.deepcopy(model).float().cpu().eval()
    x = inputs.float().cpu()
    reference = torch.cat([net(c) for c in x.split(max(batch_size, 256))]).numpy()
    max_diff, agree = 0.0, 0
    starts = list(range(0, len(x), batch_size))
    chunks = [(s, min(s + batch_size, len(x))) for s in starts] + [(0, 1)]
    for i, (a, b) in enumerate(chunks):
        ref = reference[a:b]
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x[a:b].numpy()})[0]
        if got.shape != ref.shape:
            raise ExportError(f"ONNX Runtime gave shape {got.shape} for batch {b - a}, PyTorch {ref.shape}")
        max_diff = max(max_diff, float(np.abs(got - ref).max()))
        if i < len(chunks) - 1:
            agree += int((got.argmax(1) == ref.argmax(1)).sum())
    max_logit = float(np.abs(reference).max()) if reference.size else 0.0
    n = len(x)
    return {"images": n, "max_abs_logit_diff": max_diff, "max_abs_logit": max_logit, "agree": agree,
            "agreement": agree / n if n else 1.0, "batch_sizes": sorted({b - a for a, b in chunks})}


def export_checked(model: nn.Module, spec: InputSpec, inputs: torch.Tensor, opset: int = DEFAULT_OPSET,
                   tolerance: float = DEFAULT_TOLERANCE, min_agreement: float = 1.0,
                   extra_metadata: dict[str, str] | None = None) -> tuple[bytes, dict[str, Any]]:
    """(ONNX bytes, check): export, then compare ONNX Runtime with PyTorch on `inputs`.

    Raises ExportError (nothing to write) when max |logit difference| > `tolerance` or the share of
    identical predictions < `min_agreement`. The check's result goes into `achroma.check`.
    """
    if inputs.ndim != 4 or tuple(inputs.shape[1:]) != (spec.channels, spec.height, spec.width):
        raise ValueError(f"check images have shape {tuple(inputs.shape)}, the input spec says "
                         f"(N, {spec.channels}, {spec.height}, {spec.width})")
    metadata = {**spec.metadata(), **(extra_metadata or {})}
    shape = (spec.channels, spec.height, spec.width)
    first = export_onnx(model, shape, opset, metadata)  # fails early, before the check
    check = compare_with_torch(first, model, inputs)
    check.update(tolerance=tolerance, min_agreement=min_agreement, opset=opset,
                 passed=check["max_abs_logit_diff"] <= tolerance and check["agreement"] >= min_agreement)
    if not check["passed"]:
        raise ExportError(f"export refused: ONNX Runtime differs from PyTorch by up to "
                          f"{check['max_abs_logit_diff']:.3g} in the logits (tolerance {tolerance:g}), predictions "
                          f"agree on {check['agree']}/{check['images']}; nothing written")
    onnx, _ = require_onnx()
    proto = onnx.load_from_string(first)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "achroma.check", json.dumps(check, sort_keys=True)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString(), check


def read_metadata(onnx_model: bytes) -> dict[str, Any]:
    """The `achroma.*` metadata of an exported model, JSON values decoded."""
    onnx, _ = require_onnx()
    proto = onnx.load_from_string(onnx_model)
    out: dict[str, Any] = {}
    for entry in proto.metadata_props:
        try:
            out[entry.key] = json.loads(entry.value)
        except ValueError:
            out[entry.key] = entry.value
    return out


def check_images(dataset: Any, mode: str, normalization: Any, n: int = 256, seed: int = 0) -> torch.Tensor:
    """`n` images of `dataset` (all classes alike) as the model reads them: scaled, in `mode`, normalized."""
    from ..data import BatchLoader

    if n < 1:
        raise ValueError("the check needs at least 1 image")
    per_class = -(-n // max(1, len(dataset.classes)))
    subset = dataset.stratified_subset(per_class, seed=seed) if len(dataset) > n else dataset
    x, _ = next(iter(BatchLoader(subset, batch_size=len(subset), mode=mode, normalize=normalization)))
    return x[:n]


__all__ = ["DEFAULT_OPSET", "DEFAULT_TOLERANCE", "ExportError", "InputSpec", "MIN_OPSET", "check_images", "compare_with_torch",
           "export_checked", "export_onnx", "input_spec", "ort_session", "read_metadata"]

