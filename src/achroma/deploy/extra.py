"""The optional `onnx` extra: import onnx / onnxruntime / onnxscript or fail with one clear line."""
from __future__ import annotations

import importlib
from types import ModuleType

ONNX_EXTRA_HINT = 'pip install "achroma[onnx]"'


class MissingExtraError(ImportError):
    """An optional package is not installed; the message is one line naming the extra to install."""


def _need(module: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:  # also raised when sys.modules[module] is None
        raise MissingExtraError(f"{what} needs the optional package {module!r}, which is not installed: "
                                f"{ONNX_EXTRA_HINT}") from err


def require_onnx(what: str = "ONNX export") -> tuple[ModuleType, ModuleType]:
    """(onnx, onnxruntime), both needed to export and check a model; onnxscript is the exporter's."""
    onnx = _need("onnx", what)
    ort = _need("onnxruntime", what)
    _need("onnxscript", what)  # torch.onnx.export(dynamo=True) translates the graph with it
    return onnx, ort
