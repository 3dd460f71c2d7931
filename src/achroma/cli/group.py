"""`achroma group`: make a trained model's dense 1x1 convs grouped, repair by distillation, report.

The convs are found in the forward pass (any registry or tv: model); each becomes a grouped conv
initialized from the dense weight's block diagonal, in the channel order that keeps the most of
its squared weight (`--order energy`) or in the naive order. `--repair ls-refit` then gives each
group the least-squares best weights for the dense conv's output (no training), `--repair distill`
trains the grouped model on the dense model's logits (the dense model as teacher, same input), and
`ls-refit+distill` does both in turn. Everything is
computed before the output folder is written, and that folder is written atomically (a hidden
sibling renamed into place), never over the input model.
"""
from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ..repair import check_repairs, get_repair, repair_help
from .common import add_model_args, add_run_args, check_out_dir, device, limit_calibration_and_test, resolve_model



def register(sub) -> None:
    p = sub.add_parser("group", help="make a trained model's dense 1x1 convs grouped (block diagonal of the dense "
                                     "weights, energy-keeping channel order), repair, report")
    add_model_args(p)
    p.add_argument("--mode", default=None, choices=["color", "gray", "gray3"],
                   help="the model's input (default: the checkpoint's, else color)")
    p.add_argument("--normalize", default=None, help="the model's input normalization (default: the checkpoint's, "
                   "else cifar)")
    p.add_argument("--min-channels", type=int, default=16,
                   help="input channels per group at least (the seed's min_channels_per_group; default 16)")
    p.add_argument("--rule", default="seed", choices=["seed", "uneven"],
                   help="group count: seed = largest common divisor of both channel counts within in // min "
                        "(default); uneven = in // min, any counts")
    p.add_argument("--groups", type=int, default=None, help="this many groups in every candidate layer instead")
    p.add_argument("--order", default="energy", choices=["energy", "naive"],
                   help="channel order: energy = the order keeping the most squared weight (default); naive = as is")
    p.add_argument("--repair", default="none",
                   help="a repair or a sequence joined by '+' (a row for each step): " + repair_help() +
                        ". Here ls-refit gives each group the least-squares best weights for the dense conv's output "
                        "and distill's teacher is the dense model (ls-refit+distill: the one, then the other)")
    p.add_argument("--refit-images", type=int, default=2000, help="ls-refit: this many training images, stratified "
                   "(default 2000)")
    p.add_argument("--epochs", type=int, default=1, help="distill epochs (default 1)")
    p.add_argument("--lr", type=float, default=0.003, help="distill SGD learning rate (default 0.003, compress's)")
    p.add_argument("--batch-size", type=int, default=32, help="distill batch size (default 32, compress's)")
    p.add_argument("--distill-loss", default="mse", choices=["mse", "kd"])
    p.add_argument("--dataset", default=None, help="cifar10 | fashion-mnist | folder:PATH | tar:PATH: accuracy before "
                   "and after, and the repair's images (default: none, costs only)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--display-name", default=None, help="the data set's name in the report (default: the loader's; "
                   "for folder:/tar: data, its path), as compress's --display-name")
    p.add_argument("--download", action="store_true")
    p.add_argument("--calib-limit", type=int, default=None, help="repair on N training images per class")
    p.add_argument("--test-limit", type=int, default=None, help="score on N test images per class")
    p.add_argument("--size", type=int, default=None, help="input size for tracing and MACs (default: the data's, "
                   "else 32)")
    add_run_args(p, "output folder: model.safetensors/.json, report.md/.json", quiet=True)
    p.set_defaults(func=run)


def _write(out: Path, model, meta: dict, report: dict) -> None:
    from ..grouping import render_group_markdown
    from ..io import atomic_write_bytes, atomic_write_json, save_checkpoint

    def write_all(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_checkpoint(folder / "model", model, meta)
        atomic_write_json(folder / "report.json", report)
        atomic_write_bytes(folder / "report.md", render_group_markdown(report).encode())

    if out.exists():
        write_all(out)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        write_all(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def repair(grouped, dense, kind: str, train_set, mode: str, normalize, args, log=None):
    """The grouped model after one repair step `kind` (any registered repair), against the dense model:
    ls-refit's reference and distill's teacher, on the model's own input mode and normalization."""
    from ..repair import RepairConfig, RepairJob, run_repair

    config = RepairConfig(epochs=args.epochs, distill_lr=args.lr, batch_size=args.batch_size,
                          distill_loss=args.distill_loss, refit_images=args.refit_images, stats_augment=False)
    job = RepairJob(train_set, config, args.seed, device(args.device), mode, normalize, teacher=dense,
                    teacher_mode=mode, teacher_normalize=normalize, reference=dense)
    return run_repair(grouped, kind, job).eval()


def run(args) -> int:
    import torch

    from ..data import load_dataset
    from ..grouping import apply_grouping, build_group_report, plan_grouping, render_group_markdown
    from ..training import evaluate

    out = check_out_dir(args.out, [args.weights], args.force)
    if args.threads:
        torch.set_num_threads(args.threads)
    check_repairs(args.repair)
    if args.repair != "none" and not args.dataset:
        raise ValueError(f"--repair {args.repair} needs --dataset (its training images)")
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    dense, mode, normalize, meta = resolve_model(args)
    dense = dense.eval()
    train_set = test_set = None
    if args.dataset:
        train_set = load_dataset(args.dataset, "train", args.data_dir, args.download)
        test_set = load_dataset(args.dataset, "test", args.data_dir, args.download)
        train_set, test_set = limit_calibration_and_test(args, train_set, test_set)
    size = args.size or (int(test_set.images.shape[-1]) if test_set is not None else 32)
    plans = plan_grouping(dense, args.min_channels, args.order, args.rule, args.groups, size=size, seed=args.seed)
    if not plans:
        raise ValueError(f"no dense 1x1 conv with at least {2 * args.min_channels} input channels gets two or more "
                         f"groups under the {args.rule} rule; nothing to group")
    for p in plans:
        log(f"{p.layer}: {p.in_channels} -> {p.out_channels}, {p.groups} groups, kept energy {p.kept_energy:.4f} "
            f"({args.order}) vs {p.naive_kept_energy:.4f} (naive)")
    grouped = apply_grouping(dense, plans).eval()
    dev = device(args.device)

    def score(model) -> float | None:
        if test_set is None:
            return None
        return evaluate(model, test_set, mode=mode, normalize=normalize, device=dev, progress=False)["accuracy"]

    rows = [{"key": "dense", "label": "dense", "mode": mode, "repair": "none", "accuracy": score(dense),
             "arch": "dense"}]
    rows.append({"key": "grouped", "label": f"grouped ({args.order} order)", "mode": mode, "repair": "none",
                 "accuracy": score(grouped), "arch": "grouped"})
    if args.order == "energy" and test_set is not None and args.groups != 1:  # the naive order, for comparison
        naive_plans = plan_grouping(dense, args.min_channels, "naive", args.rule, args.groups, size=size)
        rows.append({"key": "grouped-naive", "label": "grouped (naive order)", "mode": mode, "repair": "none",
                     "accuracy": score(apply_grouping(dense, naive_plans).eval()), "arch": "grouped"})
    for r in rows:
        if r["accuracy"] is not None:
            log(f"accuracy {r['label']}: {r['accuracy']:.4f}")
    final = grouped
    steps = [] if args.repair == "none" else args.repair.split("+")
    if steps:
        final = copy.deepcopy(grouped)
    for i, step in enumerate(steps):
        final = repair(final, dense, step, train_set, mode, normalize, args, log)
        done = "+".join(k + (f":{args.epochs}" if get_repair(k.partition(":")[0]).trained and ":" not in k else "")
                        for k in steps[:i + 1])
        rows.append({"key": "grouped+" + "+".join(steps[:i + 1]), "label": f"grouped ({args.order} order)",
                     "mode": mode, "repair": done, "accuracy": score(final), "arch": "grouped"})
        if rows[-1]["accuracy"] is not None:
            log(f"accuracy after {done}: {rows[-1]['accuracy']:.4f}")
    settings = {"min_channels": args.min_channels, "rule": args.rule, "groups": args.groups, "order": args.order,
                "repair": args.repair, "refit_images": args.refit_images if "ls-refit" in steps else None,
                "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                "distill_loss": args.distill_loss, "seed": args.seed, "size": size,
                "test_images": len(test_set) if test_set is not None else None,
                "repair_images": len(train_set) if train_set is not None and args.repair != "none" else None}
    name = args.model or meta.get("arch", {}).get("name")
    dataset = (test_set.extra.get("display_name", test_set.name) if test_set is not None else None)
    report = build_group_report(dense, final, plans, (_in_chans(dense, size), size, size), rows, settings, name,
                                dataset)
    report["source"] = {"model": args.model, "weights": args.weights, "dataset": args.dataset}
    ckpt_meta = {k: v for k, v in meta.items() if k not in ("format", "arch", "grouping", "training")}
    ckpt_meta.update({"mode": mode, "normalization": _norm_dict(normalize),
                      "group_transform": {**settings, "source": report["source"]}})
    _write(out, final.cpu(), ckpt_meta, report)
    print(render_group_markdown(report))
    print(f"wrote {out}: model.safetensors (grouped, {args.repair}), model.json, report.md, report.json")
    return 0


def _in_chans(model, size: int) -> int:
    from ..models.inspect import input_channels

    return input_channels(model, size)


def _norm_dict(normalize):
    from ..data import get_normalization

    return get_normalization(normalize).to_dict()
