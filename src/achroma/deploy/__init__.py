"""Deployment: ONNX export checked by ONNX Runtime, and speed measured where the model runs.

The ONNX packages are an optional extra (`pip install "achroma[onnx]"`); importing this package
does not import them, and every function that needs them raises `MissingExtraError` (one line
naming the extra) when they are absent.
"""
from .extra import ONNX_EXTRA_HINT, MissingExtraError, require_onnx

__all__ = ["ONNX_EXTRA_HINT", "MissingExtraError", "require_onnx"]
