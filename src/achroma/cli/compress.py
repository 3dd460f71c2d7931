"""`achroma compress`: fold a color model to gray, merge similar filters, repair, and report.

Everything is checked and computed before the output folder is touched: bad input (unknown
layer, a clustering that does not fit, a first layer that is not a conv, one cluster for all
filters...) exits 2 with one line and writes nothing.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..pipeline.budget import ALLOCATIONS
from ..repair import repair_help
from ..selection import selection_help, selection_names
from .common import (add_field_variant_args, add_layernorm_arg, add_model_args, add_run_args, check_out_dir,
                     field_variants, limit_calibration_and_test, resolve_model, write_once)


def register(sub) -> None:
    p = sub.add_parser("compress", help="fold a color model to gray, merge similar filters, repair; model + report")
    add_model_args(p, normalize=True)
    p.add_argument("--dataset", default="cifar10", help="cifar10 | fashion-mnist | pneumoniamnist | folder:PATH | "
                   "tar:PATH (test images score every row; train images feed the repair)")
    p.add_argument("--data-dir", default=None, help="folder holding the data set")
    p.add_argument("--display-name", default=None, help="the data set's name in the report (default: the loader's, "
                   "e.g. 'CIFAR-10 (JPEG)')")
    p.add_argument("--download", action="store_true", help="download the data set if it is not found")
    p.add_argument("--layers", default=None,
                   help="conv module paths and/or first:N, comma-separated, merged in this order, or 'all' (every "
                        "channel group; default first:1, or all with a target)")
    p.add_argument("--target-macs", type=float, default=None,
                   help="whole-network budget: the share of the folded model's MACs to keep (e.g. 0.5), shared "
                        "among the channel groups as --allocation says")
    p.add_argument("--target-params", type=float, default=None, help="the same for the parameters (both together: "
                   "every budget is met)")
    p.add_argument("--allocation", default="uniform", choices=list(ALLOCATIONS),
                   help="with a target: the same share kept in every group (uniform), shares by each group's "
                        "sensitivity (one budget), or widths searched on measured damage curves (search: meets "
                        "--target-macs and --target-params together)")
    p.add_argument("--round-to", type=int, default=1, help="with a target: every merged group's width a multiple "
                   "of N (e.g. 8 or 16), the budget still met (default 1)")
    p.add_argument("--merge", default="average", choices=["average", "medoid"],
                   help="a cluster becomes its members' mean (average, the seed's) or its representative, the "
                        "others removed (medoid: pruning chosen by the clustering)")
    p.add_argument("--between", default="none", choices=["none", "ls-refit", "bn-stats"],
                   help="repair after each layer's merge (group by group) instead of only at the end")
    add_layernorm_arg(p)
    p.add_argument("--skip", default=None, help="with a target: groups to leave whole, named by a conv that writes "
                   "them (e.g. conv1 for a ResNet's first residual stream)")
    p.add_argument("--metric", default="mse", help="mse | ssim | cosine | brightness | imed; one, or one per layer "
                   "(e.g. mse,imed: the notebook's)")
    p.add_argument("--cluster", default=None, choices=["dbscan", "kmeans", "agglomerative", "bounded"],
                   help="default: kmeans with a target, else dbscan (the notebook's); bounded: average linkage with no "
                        "cluster above ceil(N / kept), pairs when half or more stay")
    p.add_argument("--selection", default=None, choices=list(selection_names()),
                   help=f"what filters are compared by ({selection_help()}). Default: weights with a target (the "
                        "best whole-network merge in docs/RESULTS.md; fields lost to it), else fields")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--eps", default=None, help="threshold on the min-max-scaled distances (dbscan eps, "
                     "agglomerative distance threshold); one, or one per layer (the notebook: 0.027 on layer 1)")
    how.add_argument("--keep", default=None, help="keep about this share of the filters, e.g. 0.55; one, or one "
                     "per layer")
    p.add_argument("--clustering", default=None, help="use saved clusterings (clustering.json of `achroma cluster`) "
                   "instead of computing them: one per layer, '-' to compute that layer's")
    p.add_argument("--min-samples", type=int, default=1, help="dbscan min_samples (default 1)")
    p.add_argument("--imed-r", type=float, default=1.0, help="IMED Gaussian width in pixels (default 1)")
    p.add_argument("--steps", type=int, default=100, help="gradient-ascent steps for the receptive fields (100)")
    add_field_variant_args(p)
    p.add_argument("--restarts", type=int, default=1, help="average the fields of this many seeded runs (1)")
    p.add_argument("--fields-from", default="color", choices=["color", "current"],
                   help="compute each layer's fields in the color model, then luma (color, default: the notebook's "
                        "way, and the better merge in docs/RESULTS.md) or in the gray model as merged so far")
    p.add_argument("--repair", default=None, help="default: with a target, the recommended one-epoch recipe "
                   "(distill, one-cycle schedule: docs/RESULTS.md, issue 22), else bn-train; a sequence of steps joined by '+' "
                   "(ls-refit+distill), or several to compare (bn-train,ls-refit+distill); trained repairs take "
                   "epochs after ':' (finetune:3); the saved model carries the first. Steps: " + repair_help())
    p.add_argument("--epochs", type=int, default=1, help="epochs of trained repairs that name none (default 1, the "
                   "notebook's)")
    p.add_argument("--lr", type=float, default=0.01, help="bn-train learning rate (default 0.01)")
    p.add_argument("--momentum", type=float, default=0.7, help="bn-train momentum (default 0.7)")
    p.add_argument("--repair-batch-size", type=int, default=32, help="bn-train and distill batch size (default 32, Keras')")
    p.add_argument("--no-stats-augment", action="store_true",
                   help="bn-stats: estimate BN statistics on plain images (default: crop + flip, as in training)")
    p.add_argument("--distill-lr", type=lambda v: v if v == "auto" else float(v), default=0.003,
                   help="distill repair: SGD (peak) learning rate (default 0.003), or auto: from a 100-batch range "
                        "test of the same loss (torch-lr-finder), the rate of least loss / 10")
    p.add_argument("--distill-loss", default="mse", choices=["mse", "kd"],
                   help="distill repair: logit MSE (default) or Hinton KD plus the labels")
    p.add_argument("--distill-teacher", default="color", choices=["color", "gray"],
                   help="distill repair: the color model on color images (default) or the uncompressed gray model")
    p.add_argument("--distill-schedule", default=None, choices=["cosine", "onecycle"],
                   help="distill repair: the learning rate's schedule inside the epochs (default cosine; onecycle in "
                        "the recommended recipe)")
    p.add_argument("--distill-features", type=float, default=None, metavar="WEIGHT",
                   help="distill repair: also train every merged BatchNorm's outputs toward the mean of its "
                        "clusters' outputs in the uncompressed gray model, at this weight beside the logit loss "
                        "(default 0: off)")
    p.add_argument("--centripetal-until", type=float, default=None, metavar="FRACTION",
                   help="centripetal repair: the fraction of the epoch after which every merged cluster's channels "
                        "are equal (default 0.5)")
    p.add_argument("--refit-ridge", default="1e-4", type=lambda v: v if v == "auto" else float(v),
                   help="ls-refit's ridge, relative to the inputs' mean energy (default 1e-4), or auto: chosen "
                        "per layer from 1e-6..1e-1 on a fifth of the calibration images held out")
    p.add_argument("--guard", type=float, default=0.1, help="share of the repair images held out (at most 1,000) to "
                   "score every stage of a trained repair; the best stage is kept (default 0.1; 0: off)")
    p.add_argument("--calib-limit", type=int, default=None, help="repair on N training images per class (default all)")
    p.add_argument("--test-limit", type=int, default=None, help="score on N test images per class (default all)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="evaluation batch size (default 64 on a CPU, 500 on a GPU)")
    p.add_argument("--no-latency", action="store_true", help="skip the CPU latency measurements")
    p.add_argument("--latency-runs", type=int, default=20, help="runs at batch 1 (batch 256 gets a quarter, >= 3)")
    add_run_args(p, "output folder (model.safetensors/.json, report.md/.json, clustering-<layer>.json, figures)",
                 quiet=True)
    p.set_defaults(func=run)


def _load_clusterings(spec: str | None, paths: list[str]) -> dict:
    """{layer: Clustering} from --clustering (one file per layer, '-' for none)."""
    from ..clustering import Clustering
    from ..pipeline import per_layer

    if not spec:
        return {}
    files = per_layer(spec, len(paths), "--clustering")
    out = {}
    for layer, f in zip(paths, files):
        if f is None:
            continue
        if not Path(f).is_file():
            raise FileNotFoundError(f"clustering file not found: {f}")
        try:
            out[layer] = Clustering.from_json(f)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{f} is not a clustering file: {err}") from None
    return out


def budget_from_args(args):
    """The `Budget` that --target-macs / --target-params / --skip / --allocation describe (None without a target)."""
    from ..pipeline import Budget, split_list

    if args.target_macs is None and args.target_params is None:
        if args.skip or args.round_to != 1:
            raise ValueError("--skip and --round-to need --target-macs or --target-params")
        return None
    if args.keep is not None or args.eps is not None:
        raise ValueError("a target sets the share each group keeps: give no --keep or --eps with it")
    if args.layers not in ("all", None):
        raise ValueError("a target plans every channel group: give no --layers (--skip leaves groups whole)")
    return Budget(macs=args.target_macs, params=args.target_params, skip=tuple(split_list(args.skip)),
                  allocation=args.allocation, round_to=args.round_to)


def config_from_args(args, layers, repairs):
    """The `CompressConfig` the flags describe (selection and clustering unset take the measured defaults)."""
    from ..pipeline import CompressConfig, RepairConfig
    from .common import device

    repair = RepairConfig(epochs=args.epochs, lr=args.lr, momentum=args.momentum, batch_size=args.repair_batch_size,
                          stats_augment=not args.no_stats_augment, distill_lr=args.distill_lr,
                          distill_loss=args.distill_loss, distill_teacher=args.distill_teacher,
                          distill_schedule=args.distill_schedule, refit_ridge=args.refit_ridge,
                          distill_features=args.distill_features,
                          **({} if args.centripetal_until is None else {"centripetal_until": args.centripetal_until}))
    return CompressConfig(layers=layers, metric=args.metric, cluster_method=args.cluster, eps=args.eps,
                          keep=args.keep, selection=args.selection, repair=repairs, repair_config=repair,
                          fields={"steps": args.steps, "restarts": args.restarts, **field_variants(args)},
                          fields_from=args.fields_from, between=args.between, merge=args.merge, imed_r=args.imed_r,
                          min_samples=args.min_samples, seed=args.seed, batch_size=args.batch_size,
                          device=str(device(args.device)), progress=not args.quiet, guard=args.guard,
                          layernorm=args.layernorm)


def _default_repair(args) -> None:
    """No --repair: with a target, the recommended recipe (its schedule unless one is named); else bn-train."""
    from ..pipeline import RepairConfig
    from ..pipeline.config import BUDGET_REPAIR, BUDGET_REPAIR_CONFIG

    targeted = args.target_macs is not None or args.target_params is not None
    if args.repair is None:
        args.repair = BUDGET_REPAIR if targeted else "bn-train"
        if targeted:  # the recipe's settings, where none is named
            for key, value in BUDGET_REPAIR_CONFIG.items():
                if getattr(args, key) is None:
                    setattr(args, key, value)
    for key in ("distill_schedule", "distill_features"):  # else RepairConfig's own defaults
        if getattr(args, key) is None:
            setattr(args, key, getattr(RepairConfig(), key))


def run(args) -> int:
    import torch

    from ..data import load_dataset
    from ..pipeline import check_repairs, compress, per_layer, resolve_layers, split_list
    from ..pipeline.spec import check_metric
    from ..training.distributed import setup_distributed
    from .common import device

    clustering_files = [f for f in split_list(args.clustering) if f not in ("-", "")]
    check_out_dir(args.out, [args.weights, *clustering_files], args.force)
    if args.threads:
        torch.set_num_threads(args.threads)
    _default_repair(args)
    repairs = check_repairs(args.repair)
    for m in split_list(args.metric):
        check_metric(m)
    # Under torchrun (WORLD_SIZE > 1): join the group (gloo on CPU, NCCL on CUDA, a GPU per process). Every
    # process folds and merges (deterministic: the same merged model everywhere); the trained repairs train
    # data-parallel, ls-refit and BN statistics sum over the processes; only rank 0 reports and writes.
    info = setup_distributed(device(args.device))
    if info.world_size > 1 and device(args.device).type == "cuda":
        torch.cuda.set_device(info.local_rank)
        args.device = f"cuda:{info.local_rank}"
    if not info.is_main:
        args.quiet = True
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))

    model, _, normalize, meta = resolve_model(args)
    budget = budget_from_args(args)
    train_set = load_dataset(args.dataset, "train", args.data_dir, args.download)
    test_set = load_dataset(args.dataset, "test", args.data_dir, args.download)
    size = int(test_set.images.shape[-1])
    paths = "all" if budget is not None else resolve_layers(model, args.layers or "first:1", size)
    given = {} if budget is not None else _load_clusterings(args.clustering, paths)
    if budget is None:
        for name, values in (("--eps", args.eps), ("--keep", args.keep)):
            per_layer(values, len(paths), name, float)
    train_set, test_set = limit_calibration_and_test(args, train_set, test_set)
    settings = config_from_args(args, paths, repairs)
    result = compress(model, normalize, train_set, test_set, settings, budget=budget, clusterings=given, log=log)
    return write_once(info, lambda: _report_and_write(args, result, test_set, meta, log))


def _report_and_write(args, result, test_set, meta, log) -> None:
    """The report (latency measured here), the outputs written atomically, the table printed."""
    from ..report import build_report, render_markdown, write_outputs

    runs = max(1, args.latency_runs)
    report = build_report(result, latency=not args.no_latency, runs_b1=runs, runs_b256=max(3, runs // 4), log=log)
    report["source"] = {"model": args.model, "weights": args.weights, "dataset": args.dataset,
                        "calib_limit_per_class": args.calib_limit, "test_limit_per_class": args.test_limit,
                        "arguments": {k: v for k, v in vars(args).items() if k != "func"}}
    extra = {"dataset": {"name": args.dataset, "display_name": result.dataset, "classes": list(test_set.classes)},
             "source": {"model": args.model or meta.get("arch", {}).get("name"), "weights": args.weights}}
    write_outputs(args.out, result, report, extra)
    print(render_markdown(report))
    print(f"wrote {args.out}: model.safetensors (gray, {result.final_key}), report.md, report.json, "
          f"clustering and figures for {len(result.layers)} layer(s)")
