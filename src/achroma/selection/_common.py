"""Shared helpers: the convs a method reads (one path, or every writer of a residual stream)."""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..models.inspect import resolve_conv

Paths = str | Sequence[str]


def writer_convs(model: nn.Module, path: Paths) -> list[tuple[str, nn.Conv2d]]:
    """(path, conv) for `path`, or for each path of a list (a channel group's writers, e.g. every conv
    that adds into one residual stream, whose output channel c is the group's channel c).

    ValueError for an unknown path, an empty list, or writers of different widths.
    """
    paths = [path] if isinstance(path, str) else list(path)
    if not paths:
        raise ValueError("no layer path given")
    convs = [(p, resolve_conv(model, p)) for p in paths]
    widths = {p: c.out_channels for p, c in convs}
    if len(set(widths.values())) > 1:
        raise ValueError(f"the writers of one channel group must have the same number of output channels; got {widths}")
    return convs
