"""`achroma distill`: train a student (e.g. gray, smaller) on a teacher's logits (e.g. a color model)."""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

from .common import add_data_args, add_optimizer_args, load_train_test, train_config


def register(sub) -> None:
    p = sub.add_parser("distill", help="distill a teacher into a student (teacher sees color, student sees gray)")
    p.add_argument("--teacher", required=True, help="our checkpoint (.safetensors with its .json) or a registry name")
    p.add_argument("--teacher-weights", default=None, help="weights for a teacher given by name (ours or foreign)")
    p.add_argument("--teacher-kw", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="constructor arguments for a teacher given by name")
    p.add_argument("--teacher-mode", default=None, choices=["color", "gray", "gray3"],
                   help="the teacher's input (default: its checkpoint's, else color)")
    p.add_argument("--teacher-normalize", default=None,
                   help="the teacher's normalization (default: its checkpoint's, a timm model's own, else cifar)")
    p.add_argument("--student", required=True, help="registry name (a fresh student) or our checkpoint (to go on from)")
    p.add_argument("--student-kw", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="constructor arguments for a student given by name, e.g. hidden=32")
    p.add_argument("--student-mode", default="gray", choices=["color", "gray", "gray3"])
    p.add_argument("--student-normalize", default=None, help="default: the teacher's (reduced to gray by luma)")
    add_data_args(p, mode=False)
    p.add_argument("--loss", default="mse", choices=["mse", "kd"],
                   help="mse: regress the teacher's logits (the seed); kd: Hinton's softened KL + hard labels")
    p.add_argument("--T", type=float, default=4.0, help="temperature of --loss kd")
    p.add_argument("--alpha", type=float, default=0.9, help="--loss kd: weight of the soft term (labels get 1 - alpha)")
    p.add_argument("--out", required=True, help="output folder: model.safetensors + model.json at the end")
    add_optimizer_args(p)
    p.set_defaults(func=run)


def parse_kw(items: list[str]) -> dict:
    """['hidden=32', 'growth=12'] -> {'hidden': 32, 'growth': 12}; values are Python literals or strings."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[key.strip()] = value
    return out


def load_teacher(args: argparse.Namespace):
    """(teacher, mode, normalization, meta) from a checkpoint or a registry name (+ weights)."""
    from ..data import mode_channels
    from ..io import is_checkpoint, load_checkpoint
    from ..models import create_model, load_weights
    from ..models.registry import default_normalization

    meta: dict = {}
    if is_checkpoint(args.teacher):
        if args.teacher_weights or args.teacher_kw:
            raise ValueError("--teacher-weights/--teacher-kw apply to a teacher given by name, not a checkpoint")
        teacher, meta = load_checkpoint(args.teacher)
    else:
        mode = args.teacher_mode or "color"
        kw = parse_kw(args.teacher_kw)
        kw.setdefault("in_chans", mode_channels(mode))
        teacher = create_model(args.teacher, **kw)
        if args.teacher_weights:
            load_weights(teacher, args.teacher_weights)
        else:
            print(f"warning: teacher {args.teacher!r} has random weights (no --teacher-weights)")
    mode = args.teacher_mode or meta.get("mode", "color")
    normalize = args.teacher_normalize or meta.get("normalization") or default_normalization(teacher) or "cifar"
    return teacher, mode, normalize, meta


def load_student(args: argparse.Namespace, num_classes: int):
    """A fresh student by registry name, or one of our checkpoints to go on training."""
    from ..data import mode_channels
    from ..io import is_checkpoint, load_checkpoint
    from ..models import create_model

    if is_checkpoint(args.student):
        if args.student_kw:
            raise ValueError("--student-kw applies to a student given by name, not a checkpoint")
        return load_checkpoint(args.student)[0]
    kw = {"in_chans": mode_channels(args.student_mode), "num_classes": num_classes, **parse_kw(args.student_kw)}
    return create_model(args.student, **kw)


def run(args) -> int:
    from ..distill import distill
    from ..io import is_checkpoint
    from ..training import count_parameters

    out = Path(args.out).resolve()
    for given in (args.teacher, args.teacher_weights, args.student):
        if given and (is_checkpoint(given) or Path(given).is_file()) and Path(given).resolve().parent == out:
            raise ValueError("--out must not be the folder of an input checkpoint (nothing is overwritten)")
    teacher, t_mode, t_norm, t_meta = load_teacher(args)
    train_set, test_set = load_train_test(args)
    num_classes = int(t_meta.get("arch", {}).get("num_classes", train_set.num_classes))
    student = load_student(args, num_classes)
    config = train_config(args, args.student_mode, t_norm)
    history = distill(student, teacher, train_set, config, teacher_mode=t_mode, student_mode=args.student_mode,
                      teacher_normalize=t_norm, student_normalize=args.student_normalize, loss=args.loss, T=args.T,
                      alpha=args.alpha, test_set=test_set, out_dir=args.out)
    final = history["epochs"][-1] if history["epochs"] else {}
    t_params, s_params = count_parameters(teacher), count_parameters(student)
    print(f"teacher ({t_mode}): {t_params:,} parameters, test accuracy {history.get('teacher_test_accuracy', float('nan')):.4f}")
    if "test_accuracy" in final:
        print(f"student ({args.student_mode}): {s_params:,} parameters ({t_params / s_params:.1f}x smaller), "
              f"test accuracy {final['test_accuracy']:.4f} after {final['epoch']} epochs; "
              f"checkpoint {Path(args.out) / 'model.safetensors'}")
    return 0
