"""`achroma evaluate`: accuracy, balanced accuracy, ROC AUC, loss, sample and parameter counts of a model
on a data set, fed at the input geometry (pad / resize) its checkpoint records."""
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
    from ..data import InputGeometry, fit_dataset, load_dataset
    from ..report.metrics import classification_metrics, predict_proba
    from ..training import evaluate

    model, mode, normalize, meta = resolve_model(args)
    geometry = InputGeometry.from_dict(meta.get("input"))
    data = fit_dataset(load_dataset(args.dataset, args.split, args.data_dir, args.download), geometry)
    dev = device(args.device)
    result = evaluate(model, data, mode=mode, normalize=normalize, batch_size=args.batch_size, device=dev,
                      progress=not args.json)
    probs = predict_proba(model, data, mode, normalize, device=dev)
    if probs.shape[1] != data.num_classes:
        raise ValueError(f"the model gives {probs.shape[1]} class scores but {data.extra.get('display_name', data.name)} "
                         f"has {data.num_classes} classes: a model for another task (`achroma transfer` gives it a "
                         f"new head)")
    scores = classification_metrics(probs, data.labels, data.classes)
    result.update(balanced_accuracy=scores["balanced_accuracy"], auc=scores["auc"], confusion=scores["confusion"],
                  dataset=data.extra.get("display_name", data.name), split=args.split, mode=mode,
                  input=geometry.to_dict())
    if args.json:
        print(json.dumps(result))
    else:
        auc = f"{result['auc']:.4f}" if result["auc"] is not None else "n/a"
        fit = f", input {geometry.fit} to {geometry.size}" if geometry.fit != "none" else ""
        print(f"{result['dataset']} {args.split} ({mode}{fit}): accuracy {result['accuracy']:.4f}, "
              f"balanced accuracy {result['balanced_accuracy']:.4f}, AUC {auc}, "
              f"loss {result['loss']:.4f}, n={result['n']}, params={result['params']:,}")
    return 0
