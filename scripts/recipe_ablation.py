"""Issue 22's ablation: each lever of the one-epoch recipe alone and together, at matched budgets.

A color model is folded to gray exactly, compressed to a share of both its MACs and its parameters
(k-means on weights unless `--selection` says otherwise, `uniform` or `search` allocation), then given one repair recipe; the uncompressed
gray model gets the very same recipe. Both are scored on the test split. Every cell is one line of
`OUT/results.jsonl` (the run resumes: cells already there are skipped), and `OUT/table.md` is
rewritten after each cell.

    python scripts/recipe_ablation.py --weights checkpoints/resnet-cifar-20-30ep.safetensors \\
        --dataset cifar10 --targets 0.5 --out runs/ablation-r20

Budget of data (issue 22): one epoch over the training set (less the guard's 1,000 held-out images),
and 5,000 calibration images for the search (512 of them) and the refit (2,000 of the training set).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from achroma.costs import count_macs
from achroma.data import get_normalization, load_dataset
from achroma.io import atomic_write_bytes, load_checkpoint
from achroma.pipeline import Budget, CompressConfig, Compressor, RepairConfig
from achroma.pipeline.compress import guard_split
from achroma.pipeline.merging import refit_merges
from achroma.pipeline.repairs import repair_job
from achroma.repair import repair_with_guard
from achroma.training import evaluate

# name -> (repair sequence, RepairConfig changes): the levers, each against the baseline 'distill'
RECIPES = {
    "distill": ("distill", {}),  # the whole-network default before this issue
    "ls-refit+distill": ("ls-refit+distill", {}),
    "ls-refit+bn-stats+distill": ("ls-refit+bn-stats+distill", {}),
    "bn-stats+distill": ("bn-stats+distill", {}),  # what the line above is on a model with nothing merged
    "distill, gray teacher": ("distill", {"distill_teacher": "gray"}),
    "distill, kd + labels": ("distill", {"distill_loss": "kd"}),
    "distill, one-cycle": ("distill", {"distill_schedule": "onecycle"}),
    "distill, lr 0.01": ("distill", {"distill_lr": 0.01}),
    "ls-refit+distill, one-cycle": ("ls-refit+distill", {"distill_schedule": "onecycle"}),
    "ls-refit": ("ls-refit", {}),
    "ls-refit+bn-stats": ("ls-refit+bn-stats", {}),
    "distill, one-cycle, lr auto": ("distill", {"distill_schedule": "onecycle", "distill_lr": "auto"}),
    "ls-refit, ridge auto": ("ls-refit", {"refit_ridge": "auto"}),  # the ridge chosen per layer on held-out images
    "ls-refit+distill, one-cycle, ridge auto": ("ls-refit+distill", {"distill_schedule": "onecycle",
                                                                     "refit_ridge": "auto"}),
    "distill, one-cycle, augment": ("distill", {"distill_schedule": "onecycle", "augment": True}),  # crop + flip
    # the merged channels' BN outputs trained toward their clusters' means (distill/features.py)
    "distill, one-cycle, features": ("distill", {"distill_schedule": "onecycle", "distill_features": 1.0}),
    "distill, one-cycle, features 0.1": ("distill", {"distill_schedule": "onecycle", "distill_features": 0.1}),
    # BN statistics re-estimated with the affines compensated (repair/bn.py: bn_align): training starts from the
    # model as refit or merged, not from its train-mode variant
    "bn-align+distill, one-cycle": ("bn-align+distill", {"distill_schedule": "onecycle"}),
    "ls-refit+bn-align+distill, one-cycle": ("ls-refit+bn-align+distill", {"distill_schedule": "onecycle"}),
    # more steps in the one epoch, or fewer larger ones at the linearly scaled rate (the default: batch 32, 0.003)
    "distill, one-cycle, batch 16": ("distill", {"distill_schedule": "onecycle", "batch_size": 16}),
    "distill, one-cycle, batch 64": ("distill", {"distill_schedule": "onecycle", "batch_size": 64, "distill_lr": 0.006}),
    # the same epoch on the uncompressed model, each merged cluster pulled together until it is equal at the
    # given fraction of the epoch (repair/tie.py), then merged exactly
    "centripetal, one-cycle": ("centripetal", {"distill_schedule": "onecycle"}),
    "centripetal, one-cycle, until 0.25": ("centripetal", {"distill_schedule": "onecycle", "centripetal_until": 0.25}),
    "centripetal, one-cycle, until 0.75": ("centripetal", {"distill_schedule": "onecycle", "centripetal_until": 0.75}),
    "centripetal, one-cycle, until 1": ("centripetal", {"distill_schedule": "onecycle", "centripetal_until": 1.0}),
    # beyond the budget of one epoch: how far the gap is from closing with more of the same
    "distill:3, one-cycle": ("distill:3", {"distill_schedule": "onecycle"}),
}


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _done(out: Path) -> dict[tuple, dict]:
    path = out / "results.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return {(r["model"], r["allocation"], r["target"], r["recipe"]): r for r in rows}


def _append(out: Path, row: dict) -> None:
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


MERGE_ONLY = ("refit_ridge", "distill_features", "centripetal_until")  # settings that act on merged channels only


def unmerged_equivalent(recipe: str) -> str | None:
    """The recipe that does the same to a model with nothing merged, when that is another one: ls-refit
    changes nothing there (tests/test_recipe.py) and neither does a merged-channel setting
    (tests/test_distill_features.py), so 'ls-refit+X' is 'X' and 'X, features' is 'X'; centripetal ties
    nothing there and is distill (tests/test_tie.py)."""
    kind, changes = RECIPES.get(recipe, ("none", {}))
    kind = "+".join("distill" if step == "centripetal" else step for step in kind.split("+"))
    rest = kind.removeprefix("ls-refit").removeprefix("+") or "none" if kind.startswith("ls-refit") else kind
    changes = {k: v for k, v in changes.items() if k not in MERGE_ONLY}
    if (rest, changes) == RECIPES.get(recipe, ("none", {})):
        return None
    return next((n for n, (k, c) in RECIPES.items() if k == rest and c == changes), rest)


def matched(rows: dict[tuple, dict], recipe: str) -> dict | None:
    """The uncompressed gray model's row for `recipe` (or for its `unmerged_equivalent`)."""
    row = rows.get(("folded", "-", 1.0, recipe))
    same = unmerged_equivalent(recipe)
    return row if row is not None or same is None else rows.get(("folded", "-", 1.0, same))


def table(rows: dict[tuple, dict]) -> str:
    """Markdown: each compressed cell beside the uncompressed gray model given the same recipe."""
    lines = ["| target (MACs and params) | allocation | recipe | MACs kept | params kept | accuracy | uncompressed, same recipe | gap | repair s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for (model, alloc, target, recipe), r in rows.items():
        if model != "merged":
            continue
        ref = matched(rows, recipe)
        gap = f"{100 * (r['accuracy'] - ref['accuracy']):+.2f}" if ref else "-"
        lines.append(f"| {target:.0%} | {alloc} | {recipe} | {r['macs_share']:.1%} | {r['params_share']:.1%} | "
                     f"{r['accuracy']:.2%} | {ref['accuracy']:.2%} | {gap} | {r['repair_seconds']:.0f} |"
                     if ref else f"| {target:.0%} | {alloc} | {recipe} | {r['macs_share']:.1%} | "
                     f"{r['params_share']:.1%} | {r['accuracy']:.2%} | - | - | {r['repair_seconds']:.0f} |")
    refs = [(k, r) for k, r in rows.items() if k[0] == "folded"]
    lines += ["", "| uncompressed gray model + recipe | accuracy | repair s |", "|---|---:|---:|"]
    lines += [f"| {k[3]} | {r['accuracy']:.2%} | {r['repair_seconds']:.0f} |" for k, r in refs]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--targets", default="0.5", help="shares of both MACs and parameters, comma-separated")
    ap.add_argument("--allocations", default="uniform,search")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="names from RECIPES, ';'-separated when given",
                    type=lambda s: s.split(";") if ";" in s or s in RECIPES else s.split(","))
    ap.add_argument("--unrepaired", action="store_true", help="also score each model with no repair")
    ap.add_argument("--models", default="folded,merged", help="folded (the uncompressed gray model given each "
                    "recipe), merged (each target and allocation), or both")
    ap.add_argument("--calib", type=int, default=5000, help="calibration images (search; stratified from train)")
    ap.add_argument("--train-limit", type=int, default=None, help="repair images per class (default all)")
    ap.add_argument("--test-limit", type=int, default=None, help="test images per class (default all)")
    ap.add_argument("--layernorm", default="refuse", choices=["refuse", "merge"],
                    help="LayerNorm-normalized groups (ConvNeXt): left whole, or merged approximately (its rows "
                         "are labelled 'ALLOCATION, LayerNorm merged')")
    ap.add_argument("--selection", default="weights", help="how channels are chosen (compress's --selection; "
                    "rows of another than weights are labelled 'ALLOCATION, SELECTION')")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipes {unknown}; choose from {list(RECIPES)}")

    color, meta = load_checkpoint(args.weights)
    norm = get_normalization(meta["normalization"])
    train, test = load_dataset(args.dataset, "train"), load_dataset(args.dataset, "test")
    if args.train_limit:
        train = train.stratified_subset(args.train_limit, seed=args.seed)
    if args.test_limit:
        test = test.stratified_subset(args.test_limit, seed=args.seed)
    calib = train.stratified_subset(args.calib // train.num_classes, seed=args.seed)
    images, held = guard_split(train, CompressConfig().guard, args.seed)
    done = _done(out)
    say = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    say(f"{len(images)} repair images, {0 if held is None else len(held)} held out for the guard, "
        f"{len(calib)} calibration images, {len(test)} test images")

    merged: dict[tuple, Compressor] = {}
    kinds = args.models.split(",")
    cells = [("folded", "-", 1.0)] * ("folded" in kinds) + [("merged", a, float(t)) for t in args.targets.split(",")
                                                            for a in args.allocations.split(",") if "merged" in kinds]
    for model_kind, alloc, target in cells:
        if model_kind == "merged":
            t = time.perf_counter()
            comp = Compressor(CompressConfig(seed=args.seed, progress=False, layernorm=args.layernorm,
                                             selection=args.selection),
                              Budget(macs=target, params=target, allocation=alloc)).fit(color, norm, calib)
            merged[(alloc, target)] = comp
            say(f"{alloc} at {target:.0%}: fit {time.perf_counter() - t:.0f} s ({comp.timings_.get('plan', 0):.0f} s "
                f"planning), widths {comp.plan_.widths}")
            net, reference, merges = comp.model_, comp.folded_, refit_merges([r.summary() for r in comp.results_])
            timings = comp.timings_
        else:
            t = time.perf_counter()
            net = reference = Compressor(CompressConfig(seed=args.seed)).fold(copy.deepcopy(color).eval(), norm, 32)[0]
            merges, timings = None, {"fold": time.perf_counter() - t}
        base = {"macs": count_macs(reference, (1, 32, 32)), "params": _params(reference)}
        recipes = (["none"] if args.unrepaired else []) + list(args.recipes)
        label = alloc if model_kind == "folded" else ", ".join(
            [alloc] + [args.selection] * (args.selection != "weights") + ["LayerNorm merged"] * (args.layernorm == "merge"))
        for recipe in recipes:
            key = (model_kind, label, target, recipe)
            if key in done or (model_kind == "folded" and unmerged_equivalent(recipe) is not None):
                continue  # done, or the same as another recipe there (see `matched`)
            kind, changes = RECIPES.get(recipe, ("none", {}))
            t = time.perf_counter()
            outcome_d = None
            if kind == "none":
                repaired = net
            else:
                job = repair_job(images, replace(RepairConfig(), **changes), seed=args.seed, teacher=color,
                                 teacher_normalize=norm, reference=reference, merges=merges, validation=held)
                outcome = repair_with_guard(copy.deepcopy(net), kind, job)
                repaired, outcome_d = outcome.model, {**outcome.to_dict(), **job.notes}
            seconds = time.perf_counter() - t
            acc = float(evaluate(repaired.eval(), test, mode="gray", normalize="none", progress=False)["accuracy"])
            row = {"model": model_kind, "allocation": label, "target": target, "recipe": recipe, "accuracy": acc,
                   "macs_share": count_macs(repaired, (1, 32, 32)) / base["macs"],
                   "params_share": _params(repaired) / base["params"], "repair_seconds": seconds,
                   "fit_seconds": timings, "guard": outcome_d}
            _append(out, row)
            done = _done(out)  # with what other processes (other --models or targets) wrote meanwhile
            say(f"{model_kind} {label} {target:.0%} {recipe}: {acc:.2%} ({seconds:.0f} s)")
            atomic_write_bytes(out / "table.md", table(done).encode())
    print(table(done))


if __name__ == "__main__":
    main()
