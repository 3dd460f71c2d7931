"""Static int8 quantization of an exported ONNX model, checked on real test images.

ONNX Runtime's own quantizer does the work: `quant_pre_process` (shape inference and ONNX Runtime's
basic graph optimizations), then `quantize_static` in the QDQ format with per-channel int8 weights
and uint8 activations (U8S8, the CPU recipe ONNX Runtime recommends), activation ranges calibrated
on a few hundred stratified images of the data set (MinMax by default; entropy and percentile on
request).

Two choices, both measured on the demo model folded to gray (ONNX Runtime 1.32, 300 calibration
images, the 2,000 demo test images; `python benchmarks/int8_choices.py`, docs/RESULTS.md, issue 23):

- Only the ops with weights are quantized (Conv, Gemm, MatMul). Quantizing everything the quantizer
  knows (also Concat, Add, pooling, the DenseNet's pre-activation BatchNormalization) agreed with
  the float model on 81% of the predictions, against 98% for weights-only.
- The conv that reads the image stays float (all the convs a path from the input reaches first).
  When the fold's border correction was added after that conv, it saw a zero-padded raw gray image
  (a black border, about -2 standard deviations) and its output range was set by the border:
  quantized, the demo model agreed with float on 84% of the predictions (98% with it float). With
  the correction as a mask input channel (`fold.border.BorderMaskConv2d`, how exports write it
  now) quantizing it costs little (97.6% against 98.1% agreement on the 2,000 demo test images),
  but it holds well under 1% of the MACs and a float first conv keeps the model's input float32.

`quantize_checked` then compares int8 with float on test images and refuses (ExportError, nothing
to write) when accuracy drops by more than `max_drop` points, unless `force`.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .extra import require_onnx
from .onnx_export import INPUT_NAME, OUTPUT_NAME, ExportError, ort_session

DEFAULT_CALIB_IMAGES = 300
DEFAULT_MAX_DROP = 1.0
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
CALIB_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class Calibration:
    """How the activation ranges were calibrated (written into the int8 model's metadata)."""

    images: int
    seed: int
    dataset: str
    split: str
    method: str = "minmax"
    stratified: bool = True


@dataclass
class QuantizationReport:
    """Float against int8 on the same test images, and a brief timing of both on one thread."""

    images: int
    float_accuracy: float
    int8_accuracy: float
    agreement: float
    drop_points: float
    max_drop: float
    passed: bool
    float_bytes: int
    int8_bytes: int
    timing: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    kept_float: list[str] = field(default_factory=list)

    @property
    def slower_at(self) -> list[int]:
        """The batch sizes at which int8 was slower than float in the timing check."""
        return [t["batch"] for t in self.timing.values() if t["int8_ms"] > t["float_ms"]]

    @property
    def slower(self) -> bool:
        return bool(self.slower_at)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "slower": self.slower, "slower_at_batch": self.slower_at}


def dataset_inputs(dataset: Any, mode: str, normalization: Any, n: int | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images as the model reads them, labels): all of `dataset`, or `n` of it stratified by class (seeded)."""
    from ..data import BatchLoader

    if n is not None and n < 1:
        raise ValueError("need at least 1 image")
    if n is not None and n < len(dataset):
        per_class = -(-n // max(1, len(dataset.classes)))
        dataset = dataset.stratified_subset(per_class, seed=seed)
    xs, ys = [], []
    for x, y in BatchLoader(dataset, batch_size=1000, mode=mode, normalize=normalization):
        xs.append(x)
        ys.append(y)
    x, y = torch.cat(xs), torch.cat(ys)
    if n is not None and len(x) > n:  # per-class rounding took a few more: drop some at random
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        x, y = x[keep], y[keep]
    return x, y


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over a fixed array, in equal batches."""

    def __init__(self, x: np.ndarray, batch: int):
        self._batches = iter([x[i:i + batch] for i in range(0, len(x), batch)])

    def get_next(self):
        b = next(self._batches, None)
        return None if b is None else {INPUT_NAME: b}


def _calib_batch(n: int) -> int:
    """A batch size dividing `n` (histogram calibrators need equal batches), at most 32."""
    return next(b for b in range(min(32, n), 0, -1) if n % b == 0)


def _input_convs(proto) -> list[str]:
    """The convs that read the image: the first Conv on every path from the graph input (through
    Pad, Concat and the like: the fold's mask channel is concatenated to the padded image)."""
    reached = {i.name for i in proto.graph.input}
    found: list[str] = []
    for node in proto.graph.node:  # ONNX graphs are topologically sorted
        if not any(i in reached for i in node.input):
            continue
        if node.op_type == "Conv":
            found.append(node.name)
        else:
            reached.update(node.output)
    return found


def quantize_int8(float_onnx: bytes, calib_inputs: torch.Tensor | np.ndarray, calibration: Calibration,
                  keep_input_conv_float: bool = True, extra_metadata: dict[str, str] | None = None,
                  op_types: tuple[str, ...] | None = QUANTIZED_OPS) -> bytes:
    """The serialized int8 (QDQ) model of `float_onnx`, activation ranges from `calib_inputs`.

    Per-channel int8 weights, uint8 activations, ops with weights only (`QUANTIZED_OPS`); the conv
    reading the input stays float unless `keep_input_conv_float` is False; `op_types=None` quantizes
    every op the quantizer knows (benchmarks/int8_choices.py compares the choices). The float model's
    metadata is kept; `achroma.quantization` says int8, how, and how it was calibrated.
    """
    onnx, _ = require_onnx("int8 quantization")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = calibration.method.lower()
    if method not in CALIB_METHODS:
        raise ValueError(f"calibration method {calibration.method!r}: choose from {', '.join(CALIB_METHODS)}")
    x = calib_inputs.numpy() if isinstance(calib_inputs, torch.Tensor) else np.asarray(calib_inputs)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) < 1:
        raise ValueError("int8 calibration needs at least 1 image")
    source = onnx.load_from_string(float_onnx)
    logger = logging.getLogger()
    level = logger.level
    with tempfile.TemporaryDirectory(prefix="achroma-int8-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "float.onnx").write_bytes(float_onnx)
        try:
            logger.setLevel(logging.ERROR)  # the quantizer logs advice and per-tensor notes at WARNING
            with contextlib.redirect_stdout(io.StringIO()):
                quant_pre_process(str(tmp_path / "float.onnx"), str(tmp_path / "pre.onnx"))
                pre = onnx.load(str(tmp_path / "pre.onnx"))
                for i, node in enumerate(pre.graph.node):
                    if not node.name:
                        node.name = f"node_{node.op_type}_{i}"
                onnx.save(pre, str(tmp_path / "pre.onnx"))
                kept = _input_convs(pre) if keep_input_conv_float else []
                quantize_static(
                    str(tmp_path / "pre.onnx"), str(tmp_path / "int8.onnx"), _Reader(x, _calib_batch(len(x))),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    op_types_to_quantize=None if op_types is None else list(op_types),
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=kept,
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                      "percentile": CalibrationMethod.Percentile}[method])
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ExportError(f"onnxruntime.quantization failed: {type(err).__name__}: {first}") from err
        finally:
            logger.setLevel(level)
        proto = onnx.load(str(tmp_path / "int8.onnx"))
    present = {p.key for p in proto.metadata_props}
    info = {"dtype": "int8", "format": "QDQ", "quantizer": "onnxruntime.quantization.quantize_static",
            "weights": "int8, per channel, symmetric", "activations": "uint8, per tensor",
            "quantized_ops": "all the quantizer knows" if op_types is None else list(op_types),
            "kept_float": kept, "calibration": asdict(calibration)}
    metadata = {**{p.key: p.value for p in source.metadata_props if p.key not in present},
                "achroma.quantization": json.dumps(info, sort_keys=True), **(extra_metadata or {})}
    for key, value in metadata.items():
        entry = next((p for p in proto.metadata_props if p.key == key), None) or proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "int8 (QDQ) export by achroma; how it was calibrated: metadata_props['achroma.quantization']."
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def onnx_logits(onnx_model: bytes, inputs: torch.Tensor | np.ndarray, batch: int = 256, threads: int = 1) -> np.ndarray:
    """ONNX Runtime's logits for `inputs`, in batches of `batch`."""
    session = ort_session(onnx_model, threads)
    x = inputs.numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    x = np.ascontiguousarray(x, dtype=np.float32)
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


def time_float_int8(float_onnx: bytes, int8_onnx: bytes, shape: tuple[int, int, int], threads: int = 1,
                    batches: tuple[int, ...] = (1, 64), runs: int = 20, batch_runs: int = 3) -> dict[str, Any]:
    """Median ms of float and int8 (round-robin, `threads` threads) at each batch size: a brief
    check, not a benchmark."""
    from .latency import ort_latencies

    sessions = {"float": (ort_session(float_onnx, threads), shape), "int8": (ort_session(int8_onnx, threads), shape)}
    out = {}
    for b in batches:
        r = ort_latencies(sessions, b, runs if b == 1 else batch_runs, warmup=3 if b == 1 else 1)
        out[f"batch_{b}"] = {"batch": b, "threads": threads, "float_ms": r["float"]["median_ms"],
                             "int8_ms": r["int8"]["median_ms"],
                             "speedup": r["float"]["median_ms"] / r["int8"]["median_ms"]}
    return out


def quantize_checked(float_onnx: bytes, calib_inputs: torch.Tensor, test_inputs: torch.Tensor,
                     test_labels: torch.Tensor, calibration: Calibration, max_drop: float = DEFAULT_MAX_DROP,
                     force: bool = False, threads: int = 1, time_batches: tuple[int, ...] = (1, 64),
                     keep_input_conv_float: bool = True) -> tuple[bytes, QuantizationReport]:
    """(int8 ONNX bytes, report): quantize, then compare int8 with float on the test images.

    Accuracy drop = float accuracy - int8 accuracy, in points. Past `max_drop` it raises ExportError
    (nothing to write) unless `force`. Both models are then timed briefly (`time_float_int8`) so the
    caller can say when int8 is slower; the report and its verdict go into `achroma.quantization`.
    """
    onnx, _ = require_onnx("int8 quantization")
    if not max_drop == max_drop:  # NaN
        raise ValueError("max_drop must be a number")
    if len(test_inputs) != len(test_labels) or len(test_inputs) < 1:
        raise ValueError(f"{len(test_inputs)} test images and {len(test_labels)} labels: need the same, at least 1")
    int8 = quantize_int8(float_onnx, calib_inputs, calibration, keep_input_conv_float)
    y = test_labels.numpy() if isinstance(test_labels, torch.Tensor) else np.asarray(test_labels)
    pf = onnx_logits(float_onnx, test_inputs, threads=threads).argmax(1)
    pq = onnx_logits(int8, test_inputs, threads=threads).argmax(1)
    acc_f, acc_q = float((pf == y).mean()), float((pq == y).mean())
    drop = 100 * (acc_f - acc_q)
    meta = json.loads(next(p.value for p in onnx.load_from_string(int8).metadata_props
                           if p.key == "achroma.quantization"))
    report = QuantizationReport(images=len(y), float_accuracy=acc_f, int8_accuracy=acc_q,
                                agreement=float((pf == pq).mean()), drop_points=drop, max_drop=float(max_drop),
                                passed=drop <= max_drop, float_bytes=len(float_onnx), int8_bytes=len(int8),
                                calibration=asdict(calibration), kept_float=meta["kept_float"])
    if not report.passed and not force:
        raise ExportError(f"int8 export refused: accuracy {100 * acc_q:.2f}% against {100 * acc_f:.2f}% in float on "
                          f"{len(y)} test images, a drop of {drop:.2f} points (--max-drop {max_drop:g}); "
                          "nothing written")
    shape = tuple(int(s) for s in test_inputs.shape[1:])
    report.timing = time_float_int8(float_onnx, int8, shape, threads, time_batches)
    proto = onnx.load_from_string(int8)
    meta["evaluation"] = {k: v for k, v in report.to_dict().items() if k not in ("calibration", "kept_float")}
    entry = next(p for p in proto.metadata_props if p.key == "achroma.quantization")
    entry.value = json.dumps(meta, sort_keys=True)
    return proto.SerializeToString(), report


__all__ = ["CALIB_METHODS", "Calibration", "DEFAULT_CALIB_IMAGES", "DEFAULT_MAX_DROP", "QUANTIZED_OPS",
           "QuantizationReport", "dataset_inputs", "onnx_logits", "quantize_checked", "quantize_int8",
           "time_float_int8"]
