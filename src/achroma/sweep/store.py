"""The sweep's memory: one JSON file per finished point in `points/`, written atomically as each point ends.

A point is (target, method, repair). The store is the only thing a rerun trusts: a point whose
file is in `points/` is never computed again. Each file is written to a temporary name and renamed,
so a killed process leaves either the whole point or none of it, and several processes (shards of
one sweep on one machine or on a shared file system) can add points to the same folder without
touching each other's files. Folders from before per-point files keep their `results.jsonl` (one
JSON line per point, a half-written last line ignored): it is still read, never written.
The settings that make points comparable are kept beside them in `sweep.json`; a run with
different ones is refused instead of mixing two experiments.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes


@dataclass(frozen=True)
class PointKey:
    """One cell of the sweep. target: the share kept (1.0 for the uncompressed model)."""

    target: float
    method: str
    repair: str

    def id(self) -> str:
        return f"{self.target:g}|{self.method}|{self.repair}"

    def filename(self) -> str:
        """A file name safe on any file system; the short hash keeps two ids that read alike apart."""
        readable = re.sub(r"[^A-Za-z0-9.+-]+", "_", f"{self.target:g}_{self.method}_{self.repair}")
        return f"{readable}-{hashlib.sha1(self.id().encode()).hexdigest()[:8]}.json"


class ResultStore:
    """`points/*.json` (+ `sweep.json`, and a legacy `results.jsonl` when there is one) in the sweep's folder."""

    def __init__(self, folder: str | Path, settings: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.points = self.folder / "points"
        self.legacy = self.folder / "results.jsonl"
        self.folder.mkdir(parents=True, exist_ok=True)
        saved = self.folder / "sweep.json"
        wanted = json.loads(json.dumps(settings))
        try:  # created once, by whichever shard comes first; every other one compares
            atomic_write_bytes(saved, (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode(),
                               exclusive=True)
        except FileExistsError:
            pass
        before = json.loads(saved.read_text())
        if before != wanted:
            changed = sorted(k for k in set(before) | set(wanted) if before.get(k) != wanted.get(k))
            raise ValueError(f"{self.folder} holds a sweep with other settings ({', '.join(changed)}): "
                             "its points would not be comparable; use another output folder")
        self.records: dict[str, dict[str, Any]] = {}
        self.reload()

    def reload(self) -> dict[str, dict[str, Any]]:
        """Read every stored point again (other processes may have added some); returns them by id."""
        records = read_points(self.folder)
        self.records.update(records)
        return self.records

    def done(self, key: PointKey) -> bool:
        return key.id() in self.records or (self.points / key.filename()).is_file()

    def add(self, key: PointKey, record: dict[str, Any]) -> dict[str, Any]:
        """Write one finished point to its own file (atomically: a kill keeps all of it or none)."""
        record = {"id": key.id(), "target": key.target, "method": key.method, "repair": key.repair, **record}
        atomic_write_bytes(self.points / key.filename(), (json.dumps(record, sort_keys=True) + "\n").encode())
        self.records[key.id()] = record
        return record


def read_points(folder: str | Path) -> dict[str, dict[str, Any]]:
    """The finished points of a sweep folder by id: the legacy `results.jsonl` first, then `points/`."""
    folder = Path(folder)
    records: dict[str, dict[str, Any]] = {}
    legacy = folder / "results.jsonl"
    if legacy.is_file():
        for line in legacy.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            records[record["id"]] = record
    points = folder / "points"
    if points.is_dir():
        for path in sorted(points.glob("*.json")):  # not the dot-named temporaries of a write under way
            if path.name.startswith("."):
                continue
            record = json.loads(path.read_text())
            records[record["id"]] = record
    return records
