"""The seed's method: channels compared by their receptive fields (gradient ascent), then clustered."""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from .base import DistanceSelection, SelectionInput, register_selection


@register_selection
class FieldSelection(DistanceSelection):
    name = "fields"
    help = "receptive fields by gradient ascent, compared by the metric (the seed's method)"
    needs_metric = True
    takes_eps = True

    def distances(self, inp: SelectionInput) -> tuple[np.ndarray, dict[str, Any]]:
        from ..distances import pairwise_distances
        from ..fields import compute_receptive_fields
        from ..fold import GRAY_NORMALIZATION

        if inp.fields_from == "current":
            net, norm = inp.model, GRAY_NORMALIZATION
        else:
            if inp.color is None:
                raise ValueError("fields_from='color' needs the color model")
            net, norm = inp.color, inp.color_norm
        t = time.perf_counter()
        rf = compute_receptive_fields(net, inp.path, normalization=norm, size=inp.size, seed=inp.seed,
                                      progress=inp.progress, **inp.fields)
        seconds = time.perf_counter() - t
        dist = pairwise_distances(rf.gray, inp.metric, **inp.metric_kw)
        return dist, {"fields": rf, "timings": {f"fields {inp.path}": seconds}}
