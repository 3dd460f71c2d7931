"""The `achroma` command: a thin layer over the Python API; one module per subcommand.

Each command module has `register(subparsers)`, which adds its parser and sets `func`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..deploy.extra import MissingExtraError

#: Subcommand modules, in the order `achroma --help` lists them.
COMMANDS = ("demo", "compress", "group", "sweep", "transfer", "train", "evaluate", "fields", "cluster", "distill", "export", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="achroma", description="Compress color-trained CNNs into grayscale models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f".{name}", __name__).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, MissingExtraError) as err:
        print(f"achroma: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
