"""Parse and check what `compress` is asked to do: which layers, and one setting per layer.

Layers are module paths, 'first' (the first conv in forward order), 'first:N' (the first N
convs in forward order) or 'all' (the root conv of every channel group, see surgery.groups).
Folding and merging keep module paths, so a layer list resolved on the color model names the
same layers in the folded and merged models.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

import torch.nn as nn

from ..distances import METRICS
from ..fields import conv_forward_order, resolve_conv
from ..repair import check_repairs, parse_repair_step, repair_names  # noqa: F401  (re-exported)

T = TypeVar("T")
REPAIRS = repair_names()
TRAINED_REPAIRS = repair_names(trained=True)  # these take an epoch count: finetune:3
CLUSTER_METHODS = ("dbscan", "kmeans", "agglomerative", "bounded")


def split_list(spec: str | Sequence[Any] | None) -> list[Any]:
    """'a,b' -> ['a', 'b']; a sequence is returned as a list; None -> []."""
    if spec is None:
        return []
    if isinstance(spec, str):
        return [part.strip() for part in spec.split(",") if part.strip()]
    return list(spec)


def parse_first(token: str) -> int | None:
    """N for 'first:N' (1 for 'first'); None for a module path. ValueError for a bad N."""
    if token == "first":
        return 1
    if not token.startswith("first:"):
        return None
    try:
        n = int(token[len("first:"):])
    except ValueError:
        raise ValueError(f"bad layer spec {token!r}: expected first:N with N a positive integer") from None
    if n < 1:
        raise ValueError(f"bad layer spec {token!r}: N must be at least 1")
    return n


def resolve_layers(model: nn.Module, layers: str | Sequence[str], size: int = 32) -> list[str]:
    """Module paths of the conv layers to compress, in the order given ('first:N' expands in place).

    Raises ValueError for an unknown path, a module that is not a Conv2d, more layers than the
    model has, or a layer named twice.
    """
    tokens = split_list(layers)
    if not tokens:
        raise ValueError("no layers given: name conv module paths or first:N")
    order: list[str] | None = None
    paths: list[str] = []
    for token in tokens:
        if token == "all":
            paths.extend(group_roots(model, size))
            continue
        n = parse_first(token)
        if n is None:
            resolve_conv(model, token)
            paths.append(token)
            continue
        if order is None:
            order = conv_forward_order(model, size)
        if n > len(order):
            raise ValueError(f"{token}: the model has only {len(order)} conv layers in its forward pass")
        paths.extend(order[:n])
    twice = sorted({p for p in paths if paths.count(p) > 1})
    if twice:
        raise ValueError(f"layer named more than once: {', '.join(twice)}")
    return paths


def group_roots(model: nn.Module, size: int = 32) -> list[str]:
    """'all': the root conv of every channel group that can be merged, in forward order."""
    import torch

    from ..models.inspect import input_channels
    from ..surgery.groups import channel_groups

    p = next(model.parameters())
    x = torch.zeros(1, input_channels(model, size), size, size, dtype=p.dtype, device=p.device)
    return [g.root for g in channel_groups(model, x) if g.refused is None]


def per_layer(values: Any, n: int, what: str, cast: Callable[[Any], T] = lambda v: v) -> list[T | None]:
    """One value per layer: a single value is used for every layer, a list must have n entries.

    None or an empty list gives [None] * n; entries '' / '-' / None mean "not set" for that layer.
    """
    items = split_list(values) if isinstance(values, (str, list, tuple)) else ([] if values is None else [values])
    if not items:
        return [None] * n
    if len(items) == 1:
        items = items * n
    if len(items) != n:
        raise ValueError(f"{what}: {len(items)} values for {n} layers (give one, or one per layer)")
    out: list[T | None] = []
    for item in items:
        if item is None or (isinstance(item, str) and item in ("", "-")):
            out.append(None)
            continue
        try:
            out.append(cast(item))
        except (TypeError, ValueError):
            raise ValueError(f"{what}: cannot read {item!r}") from None
    return out


def check_metric(name: str) -> str:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return name


def check_cluster_setting(method: str, eps: float | None, keep: float | None, layer: str) -> None:
    """Exactly one of eps / keep, and a combination the method understands."""
    if method not in CLUSTER_METHODS:
        raise ValueError(f"unknown clustering method {method!r}; choose from {', '.join(CLUSTER_METHODS)}")
    if (eps is None) == (keep is None):
        raise ValueError(f"layer {layer}: give exactly one of eps or keep")
    if eps is not None and method in ("kmeans", "bounded"):
        raise ValueError(f"{method} takes keep (a share of the filters), not eps")
    if eps is not None and not eps > 0:
        raise ValueError(f"eps must be positive; got {eps}")
    if keep is not None and not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1]; got {keep}")
