"""Shared helpers: the convs a method reads (one path, or every writer of a channel group, at its rows)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from ..models.inspect import resolve_conv

# one conv; a list of convs whose output channel c is the group's channel c (a residual stream's
# writers); or {conv: rows}, rows[c] the conv's output channel carrying the group's channel c (a
# stream grown by concatenation: ChannelGroup.rows)
Paths = str | Sequence[str] | Mapping[str, Sequence[int]]


def writer_convs(model: nn.Module, path: Paths) -> list[tuple[str, nn.Conv2d, list[int]]]:
    """(path, conv, rows) for each conv `path` names; rows: the output channels that are the group's.

    ValueError for an unknown path, an empty list, or writers whose rows differ in number.
    """
    if isinstance(path, str):
        items = {path: None}
    elif isinstance(path, Mapping):
        items = {p: list(r) for p, r in path.items()}
    else:
        items = {p: None for p in path}
    if not items:
        raise ValueError("no layer path given")
    out = []
    for p, rows in items.items():
        conv = resolve_conv(model, p)
        out.append((p, conv, list(range(conv.out_channels)) if rows is None else rows))
    widths = {p: len(rows) for p, _, rows in out}
    if len(set(widths.values())) > 1:
        raise ValueError(f"the writers of one channel group must give the same number of channels; got {widths}")
    return out
