"""Fold a color model into a 1-channel gray model (pipeline step 1)."""
from .border import BorderCorrectedConv2d, conv_padding
from .fold import GRAY_NORMALIZATION, FoldReport, find_input_conv, fold_to_gray

__all__ = ["BorderCorrectedConv2d", "FoldReport", "GRAY_NORMALIZATION", "conv_padding", "find_input_conv",
           "fold_to_gray"]
