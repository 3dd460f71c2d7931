"""`achroma export`: a model as ONNX, checked by onnx.checker and by ONNX Runtime on real test images.

Everything is checked before anything is written: bad input, a missing `achroma[onnx]` extra, an
export the exporter or the checker rejects, or one whose logits in ONNX Runtime differ from
PyTorch's beyond --tolerance, exits 2 with one line and writes nothing. The .onnx file is written
atomically (a temporary file renamed), never over the input checkpoint.

`--quantize int8` (issue 23) writes a static int8 model instead (`achroma.deploy.quantize`: ONNX
Runtime's quantizer, QDQ, per-channel weights, calibrated on --calib-images stratified training
images). The int8 model's accuracy is compared with the float model's on the test images; past
--max-drop points it exits 2 and writes nothing, unless --force.
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
    p.add_argument("--quantize", default=None, choices=["int8"],
                   help="write a static int8 model (ONNX Runtime's quantizer, QDQ, per-channel int8 weights)")
    p.add_argument("--calib-images", type=int, default=None,
                   help="int8: calibration images, stratified by class, from the data set's training split "
                        "(default 300)")
    p.add_argument("--calib-seed", type=int, default=0, help="int8: seed of the calibration images (default 0)")
    p.add_argument("--calib-method", default="minmax", choices=["minmax", "entropy", "percentile"],
                   help="int8: how activation ranges are calibrated (default minmax)")
    p.add_argument("--eval-images", type=int, default=None,
                   help="int8: test images on which int8 and float accuracy are compared (default: all)")
    p.add_argument("--max-drop", type=float, default=None,
                   help="int8: largest accuracy drop in points accepted (default 1)")
    p.add_argument("--threads", type=int, default=1, help="PyTorch and ONNX Runtime threads for the checks (default 1)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file; with --quantize, "
                   "also write an int8 model whose accuracy dropped past --max-drop")
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
    quant = _quant_args(args)
    require_onnx()
    import torch

    torch.set_num_threads(args.threads)

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
    if quant:
        onnx_bytes = _quantize(args, onnx_bytes, data, mode, normalize, name)
    atomic_write_bytes(out, onnx_bytes)
    kind = "int8 (QDQ) ONNX" if quant else "ONNX"
    print(f"wrote {out}: {kind} opset {opset}, input 'input' (batch, {spec.channels}, {spec.height}, {spec.width}) "
          f"float32, {spec.mode}, pixel/255 then mean {spec.normalization['mean']} std {spec.normalization['std']}; "
          f"{len(onnx_bytes) / 1e6:.2f} MB")
    return 0


def _quant_args(args) -> bool:
    """Check the int8 options before any work; True when --quantize int8."""
    given = [f for f, v in (("--calib-images", args.calib_images), ("--eval-images", args.eval_images),
                            ("--max-drop", args.max_drop)) if v is not None]
    if not args.quantize:
        if given:
            raise ValueError(f"{', '.join(given)} only apply with --quantize int8")
        return False
    if args.calib_images is not None and args.calib_images < 1:
        raise ValueError("--calib-images must be at least 1")
    if args.eval_images is not None and args.eval_images < 1:
        raise ValueError("--eval-images must be at least 1")
    if args.max_drop is not None and not args.max_drop == args.max_drop:
        raise ValueError("--max-drop must be a number")
    if args.threads < 1:
        raise ValueError("--threads must be at least 1")
    return True


def _quantize(args, float_bytes: bytes, test, mode: str, normalize, name: str) -> bytes:
    """The int8 model of `float_bytes`, checked on `test` (ValueError, one line, when refused)."""
    from ..data import load_dataset
    from ..deploy.quantize import (DEFAULT_CALIB_IMAGES, DEFAULT_MAX_DROP, Calibration, dataset_inputs,
                                   quantize_checked)

    n_calib = args.calib_images or DEFAULT_CALIB_IMAGES
    max_drop = args.max_drop if args.max_drop is not None else DEFAULT_MAX_DROP
    if args.dataset is None:
        from ..demo import DEMO_DATA, assets_dir

        source, split = f"tar:{assets_dir() / DEMO_DATA}", "train"
        train = load_dataset(source, "train")
    else:
        source = args.dataset
        try:
            train, split = load_dataset(args.dataset, "train", args.data_dir, args.download), "train"
        except ValueError as err:
            if "no split" not in str(err):
                raise
            train, split = test, "test"
            print(f"note: {args.dataset} has no training split; calibrating on test images", flush=True)
    calib, _ = dataset_inputs(train, mode, normalize, n_calib, seed=args.calib_seed)
    x, y = dataset_inputs(test, mode, normalize, args.eval_images)
    calibration = Calibration(images=len(calib), seed=args.calib_seed, dataset=name if args.dataset is None else source,
                              split=split, method=args.calib_method)
    print(f"int8: calibrating on {len(calib)} {split} images ({args.calib_method}, seed {args.calib_seed}), "
          f"comparing with float on {len(x)} {name} test images", flush=True)
    int8, report = quantize_checked(float_bytes, calib, x, y, calibration, max_drop=max_drop, force=args.force,
                                    threads=args.threads)
    print(f"int8 accuracy {100 * report.int8_accuracy:.2f}% against {100 * report.float_accuracy:.2f}% in float "
          f"on {report.images} test images ({report.drop_points:+.2f} points drop, --max-drop {max_drop:g}); "
          f"predictions agree {100 * report.agreement:.2f}%; file {report.int8_bytes / 1e6:.2f} MB against "
          f"{report.float_bytes / 1e6:.2f} MB")
    if not report.passed:
        print(f"warning: the drop exceeds --max-drop {max_drop:g}; written anyway (--force)")
    for t in report.timing.values():
        verdict = "SLOWER than float" if t["int8_ms"] > t["float_ms"] else "faster than float"
        print(f"int8 at batch {t['batch']} ({t['threads']} thread(s), brief check): {t['int8_ms']:.3f} ms against "
              f"{t['float_ms']:.3f} ms float, {t['speedup']:.2f}x: {verdict}")
    if report.slower:
        at = " and ".join(str(b) for b in report.slower_at)
        print(f"note: this int8 model is slower than its float model at batch {at} in ONNX Runtime here "
              f"(for small convs the quantize/dequantize steps can cost more than int8 saves; a brief check on "
              f"a possibly busy machine: time it with `achroma bench --int8`); the float export may serve better")
    return int8
