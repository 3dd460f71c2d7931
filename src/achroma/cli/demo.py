"""`achroma demo`: the embedded example, offline, in a few minutes on a laptop CPU."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the embedded example offline (small model and data shipped in the package)")
    p.add_argument("--out", default=None, help="folder for the demo's outputs (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core this process may use)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo import run_demo

    run_demo(out_dir=args.out, threads=args.threads)
    return 0
