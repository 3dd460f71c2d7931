"""`Clustering`: the saved, inspectable result of clustering one layer's filters."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def _plain(value: Any) -> Any:
    """Convert numpy scalars/arrays inside params to JSON-ready Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class Clustering:
    """Cluster labels of a layer's filters and one representative filter index per cluster.

    labels[i] is the cluster of filter i (0..n_clusters-1, every cluster non-empty);
    representatives[k] is a member of cluster k (the medoid when made by an estimator).
    """

    labels: np.ndarray
    representatives: list[int]
    n_clusters: int
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    layer: str | None = None

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or labels.size == 0:
            raise ValueError("labels must be a non-empty 1-D array")
        if not np.issubdtype(labels.dtype, np.integer):
            if not np.all(np.equal(np.mod(labels, 1), 0)):
                raise ValueError("labels must be integers")
        self.labels = labels.astype(np.int64)
        self.representatives = [int(r) for r in self.representatives]
        self.n_clusters = int(self.n_clusters)
        if set(self.labels.tolist()) != set(range(self.n_clusters)):
            raise ValueError("labels must use every cluster id 0..n_clusters-1 and nothing else")
        if len(self.representatives) != self.n_clusters:
            raise ValueError("need exactly one representative per cluster")
        for k, rep in enumerate(self.representatives):
            if not (0 <= rep < self.labels.size) or self.labels[rep] != k:
                raise ValueError(f"representative {rep} is not a member of cluster {k}")

    @property
    def n_filters(self) -> int:
        """Number of filters clustered."""
        return int(self.labels.size)

    def groups(self) -> list[list[int]]:
        """Member filter indices of each cluster, in cluster order, each list ascending."""
        return [np.flatnonzero(self.labels == k).tolist() for k in range(self.n_clusters)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "layer": self.layer,
            "method": self.method,
            "n_clusters": self.n_clusters,
            "labels": self.labels.tolist(),
            "representatives": list(self.representatives),
            "params": _plain(self.params),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Clustering":
        """Inverse of `to_dict`."""
        return cls(
            labels=np.asarray(data["labels"], dtype=np.int64),
            representatives=list(data["representatives"]),
            n_clusters=int(data["n_clusters"]),
            method=str(data["method"]),
            params=dict(data.get("params", {})),
            layer=data.get("layer"),
        )

    def to_json(self, path: str | os.PathLike) -> None:
        """Write to `path` atomically (temp file in the same folder, then os.replace)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.to_dict(), fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Clustering":
        """Read a file written by `to_json`."""
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))
