"""Arguments and helpers shared by several subcommands."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_data_args(p: argparse.ArgumentParser, mode: bool = True) -> None:
    p.add_argument("--dataset", default="cifar10", help="cifar10 | fashion-mnist | pneumoniamnist | folder:PATH | tar:PATH")
    p.add_argument("--data-dir", default=None,
                   help="folder holding the data set (default: $ACHROMA_DATA_DIR, ./data, ../shared/datasets)")
    p.add_argument("--download", action="store_true", help="download the data set if it is not found (needs a network)")
    if mode:
        p.add_argument("--mode", default=None, choices=["color", "gray", "gray3"],
                       help="color mode of the input (default: the checkpoint's, else color)")
        p.add_argument("--normalize", default=None,
                       help="cifar | imagenet | none | half | 'MEAN,..:STD,..' (default: the checkpoint's, else cifar)")


def add_run_args(p: argparse.ArgumentParser, out_help: str, *, force: bool = True, quiet: bool = False,
                 device: str = "cpu") -> None:
    """The flags every long-running command shares: --seed, --threads, --device, --out, --force, --quiet."""
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default=device, help=f"cpu | cuda | auto (default {device})")
    p.add_argument("--out", required=True, help=out_help)
    if force:
        p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    if quiet:
        p.add_argument("--quiet", action="store_true", help="no progress output")


def add_field_variant_args(p: argparse.ArgumentParser) -> None:
    """The receptive-field variants of `compute_receptive_fields` (defaults: the notebook's recipe)."""
    from ..fields.objectives import POINTS, REDUCTIONS
    from ..fields.parameterization import PARAMETERIZATIONS

    p.add_argument("--point", choices=POINTS, default="conv",
                   help="read the filter at the conv, the BatchNorm right after it, or relu of that (default conv)")
    p.add_argument("--reduction", choices=REDUCTIONS, default="mean",
                   help="climb the map's spatial mean or its centre unit (default mean)")
    p.add_argument("--jitter", type=int, default=0, help="roll images by up to this many pixels each step (default 0)")
    p.add_argument("--parameterization", choices=PARAMETERIZATIONS, default="pixel",
                   help="ascend pixels or a 1/frequency-scaled spectrum (Lucid's fft_image) (default pixel)")


def field_variants(args: argparse.Namespace) -> dict:
    """The variant options that differ from the defaults (so settings saved before the options existed match)."""
    defaults = {"point": "conv", "reduction": "mean", "jitter": 0, "parameterization": "pixel"}
    return {k: getattr(args, k) for k, v in defaults.items() if getattr(args, k) != v}


def add_model_args(p: argparse.ArgumentParser, normalize: bool = False) -> None:
    """--model/--weights/--in-chans/--num-classes, and with `normalize` the model's --normalize."""
    p.add_argument("--model", default=None, help="registry name (seed-densenet, densenet-bc-100, resnet-cifar-20, "
                   "tv:resnet18, timm:resnet18 with achroma[timm], ...), or your own class or factory as "
                   "package.module:Name (found on sys.path: PYTHONPATH=.); optional with one of our checkpoints "
                   "of a registry model")
    p.add_argument("--model-args", default=None, help="keyword arguments of a package.module:Name or timm:NAME model, as JSON "
                   "(e.g. '{\"num_classes\": 10}')")
    p.add_argument("--weights", default=None,
                   help="our checkpoint (.safetensors with its .json) or a foreign .th/.pt/.pth state dict")
    p.add_argument("--in-chans", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=None)
    if normalize:
        p.add_argument("--normalize", default=None,
                       help="the model's input normalization: cifar | imagenet | none | half | 'MEAN,..:STD,..' "
                            "(default: the checkpoint's, a timm model's own, else cifar)")


def add_optimizer_args(p: argparse.ArgumentParser) -> None:
    """The SGD run's budget and settings, shared by `train` and `distill` (see `TrainConfig`)."""
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", default="cosine", choices=["cosine", "step"])
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--limit", type=int, default=None, help="train on N images of each class (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")


def load_train_test(args):
    """(train, test) data sets from --dataset/--data-dir/--download; --limit images per class for training."""
    from ..data import load_dataset

    train_set = load_dataset(args.dataset, "train", args.data_dir, args.download)
    test_set = load_dataset(args.dataset, "test", args.data_dir, args.download)
    if args.limit:
        train_set = train_set.stratified_subset(args.limit, seed=args.seed)
    return train_set, test_set


def limit_calibration_and_test(args, train_set, test_set):
    """--display-name on both sets, then --calib-limit / --test-limit images of each class (seeded)."""
    if getattr(args, "display_name", None):
        for data in (train_set, test_set):
            data.extra["display_name"] = args.display_name
    if getattr(args, "calib_limit", None):
        train_set = train_set.stratified_subset(args.calib_limit, seed=args.seed)
    if getattr(args, "test_limit", None):
        test_set = test_set.stratified_subset(args.test_limit, seed=args.seed)
    return train_set, test_set


def train_config(args, mode: str, normalize):
    """A `TrainConfig` from the arguments of `add_optimizer_args`."""
    from ..training import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                       weight_decay=args.weight_decay, schedule=args.schedule, warmup_epochs=args.warmup_epochs,
                       mode=mode, normalize=normalize, augment=not args.no_augment, seed=args.seed,
                       device=args.device)


def resolve_model(args, default_mode: str = "color"):
    """(model, mode, normalization, meta) from --model/--weights and, for our checkpoints, their JSON."""
    from ..data import mode_channels
    from ..io import is_checkpoint, load_checkpoint
    from ..models import create_model, load_weights

    from ..models.registry import create_user_model, default_normalization, is_import_path

    meta: dict = {}
    user = bool(args.model) and is_import_path(args.model)
    kwargs = _model_args(getattr(args, "model_args", None), user or (args.model or "").startswith("timm:"))
    if args.weights and is_checkpoint(args.weights):
        if user and not kwargs:  # the class's arguments as the checkpoint recorded them
            from ..io import read_checkpoint_meta

            kwargs = {k: v for k, v in read_checkpoint_meta(args.weights).get("arch", {}).items() if k != "name"}
        model, meta = load_checkpoint(args.weights, model=create_user_model(args.model, **kwargs) if user else None)
    else:
        if not args.model:
            raise ValueError("--model is required unless --weights is one of our checkpoints")
        if user:
            model = create_user_model(args.model, **kwargs)
        else:
            mode = getattr(args, "mode", None) or default_mode
            in_chans = args.in_chans or mode_channels(mode)
            model = create_model(args.model, in_chans=in_chans, num_classes=args.num_classes or 10, **kwargs)
        if args.weights:
            load_weights(model, args.weights)
    mode = getattr(args, "mode", None) or meta.get("mode", default_mode)
    normalize = (getattr(args, "normalize", None) or meta.get("normalization") or default_normalization(model)
                 or "cifar")
    return model, mode, normalize, meta


def _model_args(text: str | None, takes: bool) -> dict:
    """--model-args as keyword arguments (JSON object); only a package.module:Name or timm:NAME model takes them
    (timm's keyword arguments, e.g. '{"ls_init_value": 1.0}'; the checkpoint records them)."""
    if not text:
        return {}
    if not takes:
        raise ValueError("--model-args goes with --model package.module:Name or timm:NAME (registry models take "
                         "--in-chans, --num-classes)")
    import json

    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--model-args is not JSON: {err}") from None
    if not isinstance(kwargs, dict):
        raise ValueError("--model-args must be a JSON object of keyword arguments")
    return kwargs


def device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_out_dir(out: str | Path, inputs: list[str | Path | None], force: bool) -> Path:
    """Check an output folder before any work: never an input's folder, never a silent overwrite.

    Refuses (ValueError) when `out` is the folder of any input file, or exists and is not empty
    unless `force` (then files of the same names are replaced, others left alone). The folder
    itself is created by the first write.
    """
    out = Path(out)
    target = out.resolve()
    for item in inputs:
        if item is not None and Path(item).resolve().parent == target:
            raise ValueError(f"--out {out} is the folder of the input {item}; choose another folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"--out {out} exists and is not empty; pass --force to overwrite its files")
    return out


def write_once(info, write) -> int:
    """`write()` on rank 0 only under torchrun (the others wait for it, then leave the group); exit code 0."""
    if info.world_size > 1:
        import torch.distributed as dist

        if info.is_main:
            write()
        dist.barrier()  # the others wait for the outputs before leaving
        dist.destroy_process_group()
        return 0
    write()
    return 0


def add_layernorm_arg(p) -> None:
    """--layernorm, one definition for compress and sweep (`CompressConfig.layernorm`)."""
    p.add_argument("--layernorm", default="refuse", choices=["refuse", "merge"],
                   help="channel groups normalized by a LayerNorm over their channels (ConvNeXt): left whole "
                        "(refuse, the default: no merge of them is exact) or merged approximately (merge: the "
                        "norm's affine averaged; 0.25 point behind the uncompressed model after the one-epoch "
                        "recipe on one small ConvNeXt, docs/RESULTS.md)")
