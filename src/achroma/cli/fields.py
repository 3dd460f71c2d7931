"""`achroma fields`: receptive fields of one conv layer by gradient ascent, saved with figures."""
from __future__ import annotations


from .common import add_field_variant_args, add_model_args, check_out_dir, device, field_variants, resolve_model


def register(sub) -> None:
    p = sub.add_parser("fields", help="receptive fields of a conv layer by gradient ascent (npz + figures)")
    add_model_args(p, normalize=True)
    p.add_argument("--layer", required=True, help="module path of a conv layer (e.g. features.0.0.conv), "
                   "or 'first' for the first conv in forward order")
    p.add_argument("--out", required=True, help="output folder (fields.npz, fields_color.png, fields_gray.png)")
    p.add_argument("--steps", type=int, default=100, help="ascent steps (default 100, the notebook's)")
    p.add_argument("--step-size", type=float, default=0.5, help="step in 0..255 pixel units (default 0.5)")
    p.add_argument("--restarts", type=int, default=1, help="average this many seeded runs (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--batch-size", type=int, default=None, help="filters per batch (default: all at once)")
    add_field_variant_args(p)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..fields import compute_receptive_fields
    from ..fields.figures import plot_fields

    import torch

    out = check_out_dir(args.out, [args.weights], args.force)
    torch.manual_seed(args.seed)  # a model without weights gets a reproducible random init
    model, _, normalize, _ = resolve_model(args)
    model = model.to(device(args.device))
    rf = compute_receptive_fields(model, args.layer, normalization=normalize, size=args.size, steps=args.steps,
                                  step_size=args.step_size, restarts=args.restarts, seed=args.seed,
                                  batch_size=args.batch_size, **field_variants(args))
    rf.params["weights"] = str(args.weights) if args.weights else None
    rf.save(out / "fields.npz")
    plot_fields(rf, out / "fields_color.png", kind="color")
    plot_fields(rf, out / "fields_gray.png", kind="gray")
    print(f"layer {rf.layer}: {rf.n_filters} fields of {args.size}x{args.size} "
          f"({args.steps} steps, {args.restarts} restart(s), seed {args.seed}) -> {out}")
    return 0
