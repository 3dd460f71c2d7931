"""`achroma evaluate`: accuracy, loss, sample and parameter counts of a model on a data set."""
from __future__ import annotations

import json

from .common import add_data_args, add_model_args, device, resolve_model


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy and loss of a model on a data set")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=None, help="default 64 on a CPU, 500 on a GPU")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import load_dataset
    from ..training import evaluate

    model, mode, normalize, _ = resolve_model(args)
    data = load_dataset(args.dataset, args.split, args.data_dir, args.download)
    result = evaluate(model, data, mode=mode, normalize=normalize, batch_size=args.batch_size,
                      device=device(args.device), progress=not args.json)
    result.update(dataset=data.extra.get("display_name", data.name), split=args.split, mode=mode)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['dataset']} {args.split} ({mode}): accuracy {result['accuracy']:.4f}, "
              f"loss {result['loss']:.4f}, n={result['n']}, params={result['params']:,}")
    return 0
