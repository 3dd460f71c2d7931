"""Transfer to a grayscale task: a color model folded (and optionally merged), a new head, fine-tuned.

    >>> from achroma.transfer import TransferConfig, transfer
    >>> result = transfer(color_model, "cifar", train, test, TransferConfig(start="fold", target=0.5), val_set=val)
"""
from .config import STARTS, TransferConfig
from .outputs import render_markdown, write_outputs
from .run import TransferResult, build_start, finetune, transfer

__all__ = ["STARTS", "TransferConfig", "TransferResult", "build_start", "finetune", "render_markdown", "transfer",
           "write_outputs"]
