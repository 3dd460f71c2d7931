"""The sweep's memory: one JSON line per finished point, appended and flushed as each point ends.

A point is (target, method, repair). The store is the only thing a rerun trusts: a point whose
key is in the file is never computed again, and a half-written last line (the process killed
mid-write) is ignored. The settings that make points comparable are kept beside it in
`sweep.json`; a rerun with different ones is refused instead of mixing two experiments.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import atomic_write_json


@dataclass(frozen=True)
class PointKey:
    """One cell of the sweep. target: the share kept (1.0 for the uncompressed model)."""

    target: float
    method: str
    repair: str

    def id(self) -> str:
        return f"{self.target:g}|{self.method}|{self.repair}"


class ResultStore:
    """`results.jsonl` (+ `sweep.json`) in the sweep's folder."""

    def __init__(self, folder: str | Path, settings: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "results.jsonl"
        self.folder.mkdir(parents=True, exist_ok=True)
        saved = self.folder / "sweep.json"
        if saved.is_file():
            before = json.loads(saved.read_text())
            if before != json.loads(json.dumps(settings)):
                changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
                raise ValueError(f"{self.folder} holds a sweep with other settings ({', '.join(changed)}): "
                                 "its points would not be comparable; use another output folder")
        else:
            atomic_write_json(saved, settings)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                self.records[record["id"]] = record

    def done(self, key: PointKey) -> bool:
        return key.id() in self.records

    def add(self, key: PointKey, record: dict[str, Any]) -> dict[str, Any]:
        """Append one finished point (flushed and synced: a kill after this keeps it)."""
        record = {"id": key.id(), "target": key.target, "method": key.method, "repair": key.repair, **record}
        with open(self.path, "a") as f:
            if f.tell() and not self._ends_with_newline():
                f.write("\n")  # the previous line was cut short: start a fresh one
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[key.id()] = record
        return record

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
