"""`achroma export`: a model as ONNX, checked by onnx.checker and by ONNX Runtime on real test images.

Everything is checked before anything is written: bad input, a missing `achroma[onnx]` extra, an
export the exporter or the checker rejects, or one whose logits in ONNX Runtime differ from
PyTorch's beyond --tolerance, exits 2 with one line and writes nothing. The .onnx file is written
atomically (a temporary file renamed), never over the input checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

from .common import add_model_args, resolve_model


def register(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX, checked against PyTorch in ONNX Runtime "
                       "(needs achroma[onnx])")
    add_model_args(p, normalize=True)
    p.add_argument("--format", default="onnx", choices=["onnx"], help="output format (onnx)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18, the least the exporter writes)")
    p.add_argument("--mode", default=None, choices=["color", "gray", "gray3"],
                   help="color mode of the input (default: the checkpoint's; gray for a 1-channel model)")
    p.add_argument("--dataset", default=None, help="test images for the check: cifar10 | fashion-mnist | "
                   "pneumoniamnist | folder:PATH | tar:PATH (default: the CIFAR-10 (JPEG) test images shipped "
                   "with achroma); their size is the exported input size")
    p.add_argument("--data-dir", default=None, help="folder holding the data set")
    p.add_argument("--download", action="store_true", help="download the data set if it is not found")
    p.add_argument("--check-images", type=int, default=256, help="test images to compare on (default 256)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest max |logit difference| accepted (default 1e-4)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def _check_out(out: Path, weights: str | None, force: bool) -> None:
    from ..io import checkpoint_paths

    if out.suffix != ".onnx":
        raise ValueError(f"--out {out} must end in .onnx")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; name the .onnx file")
    if weights:
        inputs = {Path(weights).resolve(), *(p.resolve() for p in checkpoint_paths(weights))}
        if out.resolve() in inputs:
            raise ValueError(f"--out {out} is the input {weights}; choose another file")
    if out.exists() and not force:
        raise ValueError(f"--out {out} exists; pass --force to replace it")


def run(args) -> int:
    from ..data import load_dataset
    from ..deploy import require_onnx
    from ..deploy.onnx_export import (DEFAULT_OPSET, DEFAULT_TOLERANCE, MIN_OPSET, check_images, export_checked,
                                      input_spec)
    from ..io import atomic_write_bytes
    from ..training.evaluate import first_conv_in_channels

    out = Path(args.out)
    _check_out(out, args.weights, args.force)
    if args.check_images < 1:
        raise ValueError("--check-images must be at least 1")
    opset = args.opset if args.opset is not None else DEFAULT_OPSET
    if opset < MIN_OPSET:
        raise ValueError(f"--opset {opset}: the exporter (torch.onnx, dynamo) writes opset {MIN_OPSET} or later")
    tolerance = args.tolerance if args.tolerance is not None else DEFAULT_TOLERANCE
    if not tolerance >= 0:
        raise ValueError(f"--tolerance {args.tolerance}: must be 0 or more")
    require_onnx()

    model, mode, normalize, meta = resolve_model(args)
    if args.mode is None and first_conv_in_channels(model) == 1:
        mode = "gray"
    if args.dataset is None:
        from ..demo import DEMO_DATA, DISPLAY_NAME, assets_dir

        data = load_dataset(f"tar:{assets_dir() / DEMO_DATA}", "test")
        data.extra["display_name"] = DISPLAY_NAME
    else:
        data = load_dataset(args.dataset, "test", args.data_dir, args.download)
    classes = (meta.get("dataset") or {}).get("classes")
    spec = input_spec(model, mode, normalize, tuple(data.images.shape[-2:]), classes)
    inputs = check_images(data, mode, normalize, args.check_images)
    arch = {"arch": meta.get("arch") or getattr(model, "achroma_arch", None), "source": args.weights or args.model}
    onnx_bytes, check = export_checked(model, spec, inputs, opset=opset, tolerance=tolerance,
                                       extra_metadata={"achroma.model": json.dumps(arch, sort_keys=True)})
    name = data.extra.get("display_name", data.name)
    print(f"ONNX Runtime vs PyTorch on {check['images']} {name} test images: max |logit difference| "
          f"{check['max_abs_logit_diff']:.2e} (logits up to {check['max_abs_logit']:.3g}; tolerance {tolerance:g}), "
          f"predictions agree {check['agree']}/{check['images']} ({100 * check['agreement']:.2f}%)")
    atomic_write_bytes(out, onnx_bytes)
    print(f"wrote {out}: ONNX opset {opset}, input 'input' (batch, {spec.channels}, {spec.height}, {spec.width}) "
          f"float32, {spec.mode}, pixel/255 then mean {spec.normalization['mean']} std {spec.normalization['std']}; "
          f"{len(onnx_bytes) / 1e6:.2f} MB")
    return 0
