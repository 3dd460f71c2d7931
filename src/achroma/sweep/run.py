"""`Sweep`: every (budget, method, repair) point of one model on one data set, resumable.

The model is folded once. For each budget and method the merged model is built once (the same
group sizes for every method, from `plan_budget`, so parameters and MACs match exactly) and kept
in `models/`; each repair then starts from it. The uncompressed folded model gets every repair
too (target 1.0, method 'uncompressed'): the row each merged point is judged against. With
`scratch_epochs`, each budget's compressed architecture is also trained from scratch on gray
(method 'scratch', repair 'train:E'). Points already in the store are skipped.

Sharding: `run(shard=(i, n))` computes only shard i of n (numbered from 1). A shard takes whole
(budget, method) groups, every repair of one merged model, so each merged model is built by exactly
one process; the scratch point of a budget goes with the group of its first method, whose merged
architecture it trains. Shards share the folder (each point is its own file) and `collect()` or
`report_points()` gathers what all of them have finished.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from ..data import ImageDataset, get_normalization
from ..fold import GRAY_NORMALIZATION
from ..io import atomic_write_json, load_checkpoint, save_checkpoint
from ..pipeline import Budget, CompressConfig, Compressor, repair_model
from ..pipeline.merging import refit_merges
from ..pipeline.spec import check_repairs
from ..progress import progress
from ..report import count_macs
from ..report.table import stage_seconds
from ..surgery import reinitialize
from ..training import TrainConfig, count_parameters, evaluate, train
from .store import PointKey, ResultStore, read_points

Log = Callable[[str], None]


def grid_keys(targets: Sequence[float], methods: Sequence[str], repairs: Sequence[str],
              scratch_epochs: int | None = None) -> list[PointKey]:
    """Every point of a grid, in the order a sweep computes them and its tables list them."""
    keys = [PointKey(1.0, "uncompressed", r) for r in repairs]
    for target in targets:
        keys += [PointKey(float(target), m, r) for m in methods for r in repairs]
        if scratch_epochs:
            keys.append(PointKey(float(target), "scratch", f"train:{scratch_epochs}"))
    return keys


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n), shards numbered from 1 (1/2 and 2/2; a Slurm array --array=1-n gives
    --shard $SLURM_ARRAY_TASK_ID/n). A clear ValueError for anything else."""
    parts = str(text).split("/")
    try:
        index, count = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected i/n, e.g. 1/4 (shards are numbered from 1)") from None
    if count < 1:
        raise ValueError(f"--shard {text!r}: the number of shards must be at least 1")
    if not 1 <= index <= count:
        hint = f" (shards are numbered from 1: 1/{count} .. {count}/{count})" if index == 0 else ""
        raise ValueError(f"--shard {text!r}: i must be between 1 and {count}{hint}")
    return index, count


def shard_keys(keys: Sequence[PointKey], index: int, count: int, first_method: str | None = None) -> list[PointKey]:
    """The points of shard `index` of `count` (from 1): whole (target, method) groups, dealt out in turn.
    A scratch point joins the group of `first_method` at its budget (it trains that merged architecture)."""
    groups: dict[tuple[float, str], int] = {}
    for key in keys:
        method = first_method if key.method == "scratch" and first_method else key.method
        groups.setdefault((key.target, method), len(groups))
    mine = []
    for key in keys:
        method = first_method if key.method == "scratch" and first_method else key.method
        if groups[(key.target, method)] % count == index - 1:
            mine.append(key)
    return mine


def report_points(folder: str | Path, keys: Sequence[PointKey] | None = None
                  ) -> tuple[list[dict[str, Any]], list[PointKey]]:
    """(records, missing) of a sweep folder: the stored points of `keys` in their order and the keys not
    yet stored. Without `keys`, the grid the folder's last run saved (`grid.json`) when there is one,
    else every stored point in the order found. Stored points outside the grid are left out."""
    folder = Path(folder)
    stored = read_points(folder)
    if keys is None and (folder / "grid.json").is_file():
        import json

        grid = json.loads((folder / "grid.json").read_text())
        keys = grid_keys(grid["targets"], grid["methods"], grid["repairs"], grid.get("scratch_epochs"))
    if keys is None:
        return list(stored.values()), []
    return [stored[k.id()] for k in keys if k.id() in stored], [k for k in keys if k.id() not in stored]


@dataclass
class SweepConfig:
    """What to sweep. targets: shares of `by` ('macs', 'params', or 'both': each share of both) kept. methods: selections of
    `CompressConfig` ('fields', 'l1', 'random', ...). repairs: as `compress` takes them. merge: how
    each layer is compared and clustered (metric, cluster method, fields, seed, repair budgets);
    its layers/keep/eps/selection/repair are set by the sweep. cluster_method must give exact
    cluster counts (kmeans, agglomerative or bounded), so every method keeps the same number of channels.
    allocation: how each budget is shared among groups ('uniform' or 'sensitivity', see
    pipeline.allocation); every method of a sweep gets the same widths."""

    targets: Sequence[float]
    by: str = "macs"
    methods: Sequence[str] = ("fields", "l1", "random")
    repairs: Sequence[str] = ("none", "ls-refit", "bn-train")
    skip: Sequence[str] = ()
    allocation: str = "uniform"
    scratch_epochs: int | None = None
    merge: CompressConfig = field(default_factory=lambda: CompressConfig(cluster_method="kmeans"))

    def __post_init__(self) -> None:
        self.repairs = check_repairs(list(self.repairs))
        if self.by not in ("macs", "params", "both"):
            raise ValueError(f"by must be 'macs', 'params' or 'both'; got {self.by!r}")
        bad = [t for t in self.targets if not 0 < float(t) < 1]
        if bad:
            raise ValueError(f"targets are shares kept, strictly between 0 and 1; got {bad[0]}")
        if self.merge.cluster_method == "dbscan":
            raise ValueError("a sweep needs exact cluster counts: use cluster_method 'kmeans', 'agglomerative' or 'bounded'")
        for method in self.methods:
            CompressConfig(selection=method)  # checks the name
        if self.scratch_epochs is not None and self.scratch_epochs < 1:
            raise ValueError("scratch_epochs must be a positive number of epochs")

    def settings(self) -> dict[str, Any]:
        """What every point depends on (the lists of points may grow between runs; these may not)."""
        merge = self.merge.to_dict()
        for k in ("layers", "keep", "eps", "selection", "repair", "progress", "batch_size", "device"):
            merge.pop(k)
        out = {"by": self.by, "skip": list(self.skip), "scratch_epochs": self.scratch_epochs, "merge": merge}
        if self.allocation != "uniform":  # (older sweep folders predate the choice)
            out["allocation"] = self.allocation
        for key, default in (("between", "none"), ("merge", "average"), ("layernorm", "refuse")):  # (older sweep folders predate them)
            if merge.get(key) == default:
                merge.pop(key)
        if merge["repair_config"].get("distill_features") == 0.0:  # (likewise)
            merge["repair_config"].pop("distill_features")
        return out


class Sweep:
    """Built once with the model, data and folder; `run()` computes the missing points and returns all."""

    def __init__(self, model: nn.Module, normalization: Any, train_set: ImageDataset, test_set: ImageDataset,
                 out_dir: str | Path, config: SweepConfig, log: Log | None = print) -> None:
        self.color = copy.deepcopy(model).eval()
        self.norm = get_normalization(normalization)
        self.train_set, self.test_set, self.config = train_set, test_set, config
        self.size = int(test_set.images.shape[-1])
        self.device = torch.device(config.merge.device)
        self.out = Path(out_dir)
        self.log = log or (lambda msg: None)
        settings = {**config.settings(), "model": (getattr(model, "achroma_arch", None) or {}).get("name"),
                    "dataset": test_set.extra.get("display_name", test_set.name), "test_images": len(test_set),
                    "calibration_images": len(train_set)}
        self.store = ResultStore(self.out, settings)
        self._gray: nn.Module | None = None

    def keys(self) -> list[PointKey]:
        """Every point, in the order they are computed."""
        c = self.config
        return grid_keys(c.targets, c.methods, c.repairs, c.scratch_epochs)

    def shard(self, index: int, count: int) -> list[PointKey]:
        """The points of shard `index` of `count` (numbered from 1), see the module's doc."""
        return shard_keys(self.keys(), index, count, first_method=self.config.methods[0])

    def run(self, shard: tuple[int, int] | None = None) -> list[dict[str, Any]]:
        """Compute the missing points (of `shard`, (i, n) from 1, when given); returns the records of
        every point (of the shard) in order."""
        c = self.config
        # the grid of the last run, for `report_points` (every shard of one command writes the same)
        atomic_write_json(self.out / "grid.json", {"targets": [float(t) for t in c.targets],
                                                   "methods": list(c.methods), "repairs": list(c.repairs),
                                                   "scratch_epochs": c.scratch_epochs})
        keys = self.keys() if shard is None else self.shard(*shard)
        todo = [k for k in keys if not self.store.done(k)]
        where = "" if shard is None else f" (shard {shard[0]}/{shard[1]}: {len(keys)} of {len(self.keys())} points)"
        self.log(f"sweep in {self.out}{where}: {len(keys) - len(todo)} points done, {len(todo)} to compute")
        bar = progress(total=len(todo), desc="sweep", enabled=self.config.merge.progress)
        for key in todo:
            bar.set_postfix(point=key.id())
            self._compute(key)
            bar.update(1)
        bar.close()
        self.store.reload()
        return [self.store.records[k.id()] for k in keys]

    def collect(self) -> tuple[list[dict[str, Any]], list[PointKey]]:
        """(records, missing): every point of the grid that any process has finished, in order, and the rest."""
        return report_points(self.out, self.keys())

    # -- one point ---------------------------------------------------------------------------------------

    def _compute(self, key: PointKey) -> None:
        t = time.perf_counter()
        if key.method == "scratch":
            model, info = self._scratch(key.target)
            seconds = {"train": time.perf_counter() - t}
        else:
            base, info = self._model(key.target, key.method)
            seconds = dict(info.get("seconds", {}))
            t = time.perf_counter()
            model = base if key.repair == "none" else repair_model(
                base, key.repair, self.train_set, self.config.merge.repair_config, seed=self.config.merge.seed,
                device=self.device, teacher=self.color, teacher_normalize=self.norm, reference=self.gray,
                merges=refit_merges(info.get("layers", []))).eval()
            seconds["repair"] = time.perf_counter() - t
        t = time.perf_counter()
        score = evaluate(model, self.test_set, mode="gray", normalize=GRAY_NORMALIZATION,
                         batch_size=self.config.merge.batch_size, device=self.device, progress=False)
        seconds["evaluate"] = time.perf_counter() - t
        record = self.store.add(key, {"accuracy": score["accuracy"], "loss": score["loss"], "n": score["n"],
                                      "params": count_parameters(model), "macs": info["macs"],
                                      "widths": info.get("widths"), "seconds": seconds})
        self.log(f"{key.id()}: accuracy {record['accuracy']:.4f}, {record['params']:,} parameters, "
                 f"{record['macs'] / 1e6:.2f} MMACs")

    @property
    def gray(self) -> nn.Module:
        """The folded gray model (exact border), made once."""
        if self._gray is None:
            self._gray, _ = Compressor(self.config.merge).fold(self.color, self.norm, self.size)
        return self._gray

    def _model_path(self, target: float, method: str) -> Path:
        return self.out / "models" / f"{self.config.by}-{target:g}-{method}.safetensors"

    def _model(self, target: float, method: str) -> tuple[nn.Module, dict[str, Any]]:
        """The unrepaired model of a point: the folded one, or merged for (target, method), built once."""
        if method == "uncompressed":  # saved too, so that `achroma bench` can time it beside the merged ones
            path = self.out / "models" / "uncompressed.safetensors"
            if not path.is_file():
                save_checkpoint(path, self.gray, {"normalization": GRAY_NORMALIZATION.to_dict(), "mode": "gray"})
            return self.gray, {"macs": count_macs(self.gray, (1, self.size, self.size)), "seconds": {}}
        path = self._model_path(target, method)
        if path.is_file() and path.with_suffix(".json").is_file():
            model, meta = load_checkpoint(path, map_location=self.device)
            return model.eval(), meta["sweep"]
        merged, info = self._merge(target, method)
        save_checkpoint(path, merged, {"normalization": GRAY_NORMALIZATION.to_dict(), "mode": "gray",
                                       "sweep": info})
        return merged, info

    def _merge(self, target: float, method: str) -> tuple[nn.Module, dict[str, Any]]:
        c = self.config
        self.log(f"merging for {c.by} {target:g} by {method}")
        merge = replace(c.merge, selection=method, progress=False)
        goals = {"macs": target, "params": target} if c.by == "both" else {c.by: target}
        comp = Compressor(merge, Budget(**goals, skip=tuple(c.skip), allocation=c.allocation))
        comp.fit(self.color, self.norm, self.train_set, size=self.size)
        summary = comp.summary()
        return comp.model_.eval(), {"macs": summary["macs"], "widths": comp.plan_.widths,
                                    "predicted": comp.plan_.predicted, "seconds": stage_seconds(comp.timings_),
                                    "layers": summary["layers"]}

    def _scratch(self, target: float) -> tuple[nn.Module, dict[str, Any]]:
        """The compressed architecture (that of the first method's merged model) re-initialized and trained
        on gray images with labels for `scratch_epochs`, the training recipe of `achroma train`."""
        base, info = self._model(target, self.config.methods[0])
        model = reinitialize(copy.deepcopy(base), seed=self.config.merge.seed)
        cfg = TrainConfig(epochs=int(self.config.scratch_epochs), batch_size=min(128, len(self.train_set)),
                          mode="gray", normalize="none",
                          seed=self.config.merge.seed, device=str(self.device))
        train(model, self.train_set, cfg, resume=False)
        return model.eval(), {"macs": info["macs"], "widths": info.get("widths")}
