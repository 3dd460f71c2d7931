"""`achroma sweep`: budgets x methods x repairs on one model -> one table (CSV, JSON, Markdown) and plots.

Resumable: run the same command again after a kill and only the missing points are computed (the
folder keeps `results.jsonl` and the merged models). A folder from a sweep with other settings is
refused. `--report-only` rewrites the tables and plots from what is there.

Sharded: `--shard i/n` (numbered from 1) computes only the i-th of n shares of the points (whole
(budget, method) groups), so n processes or machines (a Slurm array, a shell loop) can run the same
command into the same folder; each point is its own file, written atomically. A shard writes no
tables (the others may not be done): `--report-only` makes them once all are, naming what is missing.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..pipeline.budget import ALLOCATIONS
from ..pipeline.config import BUDGET_REPAIR_CONFIG
from ..repair import RepairConfig
from ..selection import selection_help
from .common import (add_field_variant_args, add_layernorm_arg, add_model_args, add_run_args, check_out_dir,
                     field_variants, limit_calibration_and_test, resolve_model)


def register(sub) -> None:
    p = sub.add_parser("sweep", help="budgets x methods x repairs -> accuracy/size table and Pareto plots (resumable)")
    add_model_args(p, normalize=True)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--display-name", default=None)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--target-macs", default=None, help="shares of the MACs kept, e.g. 0.8,0.5,0.3")
    budget.add_argument("--target-params", default=None, help="shares of the parameters kept")
    budget.add_argument("--target-both", default=None, help="shares kept of both the MACs and the parameters")
    p.add_argument("--skip", default=None, help="groups to leave whole, named by a conv that writes them")
    p.add_argument("--allocation", default="uniform", choices=list(ALLOCATIONS),
                   help="how a budget is shared among groups: the same share everywhere, by each group's "
                        "sensitivity (KL when it alone loses half its channels), or by search (measured damage "
                        "curves, MACs and parameters together)")
    p.add_argument("--merge", default="average", choices=["average", "medoid"],
                   help="a cluster becomes its members' mean (average, the seed's) or its representative, the "
                        "others removed (medoid: pruning chosen by the clustering)")
    p.add_argument("--between", default="none", choices=["none", "ls-refit", "bn-stats"],
                   help="repair after each group's merge (group by group) instead of only at the end")
    p.add_argument("--methods", default="fields,l1,random",
                   help=f"selections to compare at the same group sizes ({selection_help()})")
    p.add_argument("--repairs", default="none,ls-refit,bn-train", help="repairs as compress takes them, e.g. "
                   "none,ls-refit,bn-train,distill,ls-refit+distill,finetune:3")
    p.add_argument("--scratch-epochs", type=int, default=None,
                   help="also train each budget's compressed architecture from scratch for this many epochs")
    p.add_argument("--metric", default="mse", help="distance between fields (and kernels)")
    add_layernorm_arg(p)
    p.add_argument("--cluster", default="kmeans", choices=["kmeans", "agglomerative", "bounded"],
                   help="clustering by count, so every method keeps the same channels per group (default kmeans)")
    p.add_argument("--steps", type=int, default=100, help="receptive-field ascent steps")
    add_field_variant_args(p)
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--fields-from", default="color", choices=["color", "current"])
    p.add_argument("--epochs", type=int, default=1, help="epochs of trained repairs that name none (default 1)")
    p.add_argument("--repair-batch-size", type=int, default=32)
    p.add_argument("--distill-schedule", default=BUDGET_REPAIR_CONFIG["distill_schedule"], choices=["cosine", "onecycle"],
                   help="distill repairs' learning-rate schedule (default: compress's with a target, onecycle)")
    p.add_argument("--distill-features", type=float, metavar="WEIGHT",
                   default=BUDGET_REPAIR_CONFIG.get("distill_features", RepairConfig().distill_features),
                   help="distill repairs' weight of the merged channels' feature term (default: compress's with a "
                        "target)")
    p.add_argument("--calib-limit", type=int, default=None, help="repair on N training images per class (default all)")
    p.add_argument("--test-limit", type=int, default=None, help="score on N test images per class (default all)")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size")
    add_run_args(p, "sweep folder (created; an existing sweep folder is resumed)", force=False, quiet=True)
    p.add_argument("--report-only", action="store_true",
                   help="only write the tables and plots from the points in the folder (the grid of the --target-* "
                        "flags given here, else of the folder's last run) and name the points missing")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="compute only shard I of N (numbered from 1: 1/4 .. 4/4), whole (budget, method) groups; "
                        "run all N into the same --out, then --report-only")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    import torch

    from ..data import load_dataset
    from ..pipeline import CompressConfig, RepairConfig
    from ..pipeline.spec import split_list
    from ..sweep import Sweep, SweepConfig, grid_keys, parse_shard, report_points, write_tables
    from .common import device

    out = Path(args.out)
    shard = parse_shard(args.shard) if args.shard is not None else None
    by, targets = next(((by, t) for by, t in (("macs", args.target_macs), ("params", args.target_params),
                                               ("both", args.target_both)) if t), ("macs", None))
    if args.report_only:
        if not (out / "sweep.json").is_file():
            raise ValueError(f"{out} holds no sweep (sweep.json) to report")
        settings = json.loads((out / "sweep.json").read_text())
        keys = None
        if targets is not None:  # the grid named here, with the run's defaults for what is not named
            if by != settings["by"]:
                raise ValueError(f"{out} holds a sweep by {settings['by']}, not {by}")
            scratch = args.scratch_epochs if args.scratch_epochs is not None else settings.get("scratch_epochs")
            keys = grid_keys([float(t) for t in split_list(targets)], split_list(args.methods),
                             split_list(args.repairs), scratch)
        records, missing = report_points(out, keys)
        if not records:
            raise ValueError(f"{out} holds no finished sweep points to report")
        if missing:
            print(f"{len(missing)} of {len(records) + len(missing)} points missing: "
                  f"{', '.join(k.id() for k in missing)}", file=sys.stderr)
        for path in write_tables(records, out, title=settings["dataset"], missing=[k.id() for k in missing]):
            print(path)
        return 0
    if targets is None:
        raise ValueError("give the budgets: --target-macs, --target-params or --target-both (e.g. 0.5,0.3)")
    if not (out / "sweep.json").is_file() and not (shard and _sweep_entries_only(out)):
        check_out_dir(out, [args.weights], force=False)  # a new sweep: an empty folder, not an input's
    if args.threads:
        torch.set_num_threads(args.threads)
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    model, _, normalize, _ = resolve_model(args)
    train_set = load_dataset(args.dataset, "train", args.data_dir)
    test_set = load_dataset(args.dataset, "test", args.data_dir)
    train_set, test_set = limit_calibration_and_test(args, train_set, test_set)
    merge = CompressConfig(metric=args.metric, cluster_method=args.cluster,
                           repair_config=RepairConfig(epochs=args.epochs, batch_size=args.repair_batch_size,
                                                      distill_schedule=args.distill_schedule,
                                                      distill_features=args.distill_features),
                           fields={"steps": args.steps, "restarts": args.restarts, **field_variants(args)},
                           fields_from=args.fields_from,
                           between=args.between, merge=args.merge, seed=args.seed, batch_size=args.batch_size,
                           device=str(device(args.device)),
                           progress=not args.quiet, layernorm=args.layernorm)
    config = SweepConfig(targets=[float(t) for t in split_list(targets)], by=by, methods=split_list(args.methods),
                         repairs=split_list(args.repairs), skip=split_list(args.skip), allocation=args.allocation,
                         scratch_epochs=args.scratch_epochs, merge=merge)
    sweep = Sweep(model, normalize, train_set, test_set, out, config, log=log)
    records = sweep.run(shard=shard)
    if shard is not None:
        _, missing = sweep.collect()
        print(f"shard {shard[0]}/{shard[1]}: {len(records)} points in {out}; {len(missing)} of the sweep's "
              f"{len(sweep.keys())} points not yet there. When every shard is done: "
              f"achroma sweep --report-only --out {out}")
        return 0
    paths = write_tables(records, out, title=test_set.extra.get("display_name", test_set.name))
    print((out / "results.md").read_text())
    print(f"wrote {', '.join(p.name for p in paths)} in {out}")
    return 0


def _sweep_entries_only(out: Path) -> bool:
    """True when `out` is missing or holds nothing but what another shard of a sweep starting at the
    same moment may have made already (its settings, being written, or its points and models)."""
    if not out.is_dir():
        return True
    return all(p.name in ("sweep.json", "grid.json", "points", "models") or p.name.startswith(".sweep.json.")
               or p.name.startswith(".grid.json.") for p in out.iterdir())
