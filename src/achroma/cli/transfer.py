"""`achroma transfer`: a color model to a fine-tuned gray model for a new grayscale task."""
from __future__ import annotations

import sys
from dataclasses import replace

from .common import add_model_args, add_run_args, check_out_dir, resolve_model, write_once


def register(sub) -> None:
    p = sub.add_parser("transfer", help="fold a color model to gray (optionally merge to a budget), give it a new "
                                         "head for a grayscale task, fine-tune, report accuracy / AUC / confusion")
    add_model_args(p, normalize=True)
    p.add_argument("--dataset", required=True, help="the target task: pneumoniamnist | fashion-mnist | folder:PATH | tar:PATH")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--download", action="store_true")
    p.add_argument("--start", default="fold", choices=["scratch", "gray3", "fold"],
                   help="scratch: same architecture, 1 channel, fresh weights; gray3: the color model on gray x3; "
                        "fold: the folded gray model (default)")
    p.add_argument("--target-macs", type=float, default=None, help="with --start fold: merge to this share of the MACs")
    p.add_argument("--target-params", type=float, default=None, help="... or of the parameters")
    p.add_argument("--selection", default="weights", help="how merged filters are chosen (compress's --selection)")
    p.add_argument("--cluster", default="kmeans", help="clustering for the merge (kmeans, agglomerative, bounded)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--pad", type=int, nargs="?", const=32, default=None, metavar="SIZE",
                      help="zero-pad images to SIZE x SIZE (default 32, the source models' size)")
    size.add_argument("--image-size", type=int, default=None, help="resize images to this size (bilinear)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    p.add_argument("--lr", type=float, default=None, help="default 0.05 for sgd, 0.001 for adamw")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--no-augment", action="store_true", help="no random crops")
    p.add_argument("--flip", action="store_true", help="also flip left-right (off: X-rays and documents have sides)")
    p.add_argument("--patience", type=int, default=None,
                   help="early stopping: epochs without a better validation accuracy (needs a 'val' split)")
    p.add_argument("--select-by", default="accuracy", choices=["accuracy", "balanced_accuracy"],
                   help="the validation score that picks the epoch kept (balanced_accuracy for imbalanced splits)")
    p.add_argument("--class-weights", default="none", choices=["none", "balanced"])
    p.add_argument("--limit", type=int, default=None, help="train on N images of each class (quick runs)")
    p.add_argument("--test-limit", type=int, default=None, help="score N test images of each class (quick runs)")
    p.add_argument("--latency-runs", type=int, default=20, help="0: skip the CPU latency measurement")
    add_run_args(p, "output folder (never the input model's)")
    p.set_defaults(func=run)


def load_splits(args):
    """(train, val or None, test) of the target data set, with --limit / --test-limit applied."""
    from ..data import load_dataset

    train = load_dataset(args.dataset, "train", args.data_dir, args.download)
    test = load_dataset(args.dataset, "test", args.data_dir, args.download)
    try:
        val = load_dataset(args.dataset, "val", args.data_dir, args.download)
    except ValueError:  # no validation split (Fashion-MNIST): no early stopping
        val = None
    if args.limit:
        train = train.stratified_subset(args.limit, seed=args.seed)
    if args.test_limit:
        test = test.stratified_subset(args.test_limit, seed=args.seed)
    return train, val, test


def run(args) -> int:
    import torch

    from ..data import InputGeometry
    from ..training.distributed import setup_distributed
    from ..transfer import TransferConfig, transfer
    from .common import device

    check_out_dir(args.out, [args.weights], args.force)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.target_macs is not None and args.target_params is not None:
        raise ValueError("give one of --target-macs and --target-params")
    by, target = ("params", args.target_params) if args.target_params is not None else ("macs", args.target_macs)
    geometry = (InputGeometry(args.pad, "pad") if args.pad else
                InputGeometry(args.image_size, "resize") if args.image_size else InputGeometry())
    lr = args.lr if args.lr is not None else (0.05 if args.optimizer == "sgd" else 1e-3)
    config = TransferConfig(start=args.start, target=target, by=by, selection=args.selection, cluster=args.cluster,
                            geometry=geometry, epochs=args.epochs, batch_size=args.batch_size,
                            optimizer=args.optimizer, lr=lr, weight_decay=args.weight_decay,
                            augment=not args.no_augment, flip=args.flip, patience=args.patience,
                            select_by=args.select_by,
                            class_weights=args.class_weights, seed=args.seed, device=args.device,
                            latency_runs=args.latency_runs)
    # Under torchrun (WORLD_SIZE > 1): every process builds the same start (the fold and merge are
    # deterministic), the fine-tuning is data-parallel (`train` shards each epoch), rank 0 alone writes.
    info = setup_distributed(device(args.device))
    if info.world_size > 1 and device(args.device).type == "cuda":
        torch.cuda.set_device(info.local_rank)
        config = replace(config, device=f"cuda:{info.local_rank}")
    model, _, normalize, meta = resolve_model(args)
    train, val, test = load_splits(args)
    if val is None and args.patience and info.is_main:
        print(f"achroma: {args.dataset} has no validation split: --patience ignored", file=sys.stderr)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if info.is_main else None  # noqa: E731
    result = transfer(model, normalize, train, test, config, val_set=val, log=log)
    return write_once(info, lambda: _write(args, result, test, config, meta))


def _write(args, result, test, config, meta) -> None:
    from ..transfer import render_markdown, write_outputs

    name = test.extra.get("display_name", args.dataset)
    source = args.model or meta.get("arch", {}).get("name", "model")
    title = f"{source} to {name}: {config.label}"
    extra = {"dataset": {"name": args.dataset, "display_name": name, "classes": list(test.classes)},
             "source": {"model": source, "weights": args.weights}}
    write_outputs(args.out, result, extra, title)
    print(render_markdown(result, title))
    print(f"wrote {args.out}: model.safetensors (+ .json), report.md, report.json, confusion.png")
