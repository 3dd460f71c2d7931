"""`achroma cluster`: distances between a layer's receptive fields, a clustering, and figures."""
from __future__ import annotations

import io

from .common import check_out_dir


def register(sub) -> None:
    from ..clustering import METHODS
    from ..distances import METRICS

    p = sub.add_parser("cluster", help="cluster a layer's filters by the distances between their receptive fields")
    p.add_argument("--fields", required=True, help="fields.npz written by `achroma fields`")
    p.add_argument("--metric", default="mse", choices=list(METRICS), help="distance between gray fields (default mse)")
    p.add_argument("--r", type=float, default=1.0, help="IMED Gaussian width in pixels (imed only; default 1)")
    p.add_argument("--method", default="dbscan", choices=list(METHODS))
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--eps", type=float, help="threshold on the min-max-scaled distances "
                     "(dbscan eps; agglomerative distance_threshold)")
    how.add_argument("--keep", type=float, help="keep about this share of the filters (searched; e.g. 0.55)")
    how.add_argument("--n-clusters", type=int, help="number of clusters (kmeans, agglomerative, bounded)")
    p.add_argument("--min-samples", type=int, default=1, help="dbscan min_samples (default 1)")
    p.add_argument("--out", required=True, help="output folder (distances.npy, clustering.json, distances.png, "
                   "clusters.png)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.set_defaults(func=run)


def _estimator(args):
    """The fitted-to-be estimator that the arguments ask for; ValueError for combinations that make no sense."""
    from ..clustering import AgglomerativeClustering, BoundedAgglomerativeClustering, DBSCANClustering, KMeansClustering

    if args.method == "dbscan":
        if args.n_clusters is not None:
            raise ValueError("dbscan takes --eps or --keep, not --n-clusters")
        return DBSCANClustering(eps=args.eps, min_samples=args.min_samples)
    if args.method == "kmeans":
        if args.eps is not None:
            raise ValueError("kmeans takes --n-clusters or --keep, not --eps")
        return KMeansClustering(n_clusters=args.n_clusters)
    if args.method == "bounded":
        if args.eps is not None:
            raise ValueError("bounded takes --n-clusters or --keep, not --eps")
        return BoundedAgglomerativeClustering(n_clusters=args.n_clusters)
    if args.eps is not None:
        return AgglomerativeClustering(distance_threshold=args.eps)
    return AgglomerativeClustering(n_clusters=args.n_clusters)


def run(args) -> int:
    import numpy as np

    from ..clustering import search_keep
    from ..distances import pairwise_distances
    from ..fields import ReceptiveFields
    from ..fields.figures import plot_clusters, plot_distance_matrix
    from ..io import atomic_write_bytes

    if args.method != "dbscan" and args.min_samples != 1:
        raise ValueError("--min-samples applies to dbscan only")
    out = check_out_dir(args.out, [args.fields], args.force)
    rf = ReceptiveFields.load(args.fields)
    kw = {"r": args.r} if args.metric == "imed" else {}
    dist = pairwise_distances(rf.gray, args.metric, **kw)
    if args.keep is not None:
        extra = {"min_samples": args.min_samples} if args.method == "dbscan" else {}
        est = search_keep(dist, keep=args.keep, method=args.method, **extra)
    else:
        est = _estimator(args).fit(dist)
    result = est.to_clustering(layer=rf.layer)
    result.params.update(metric=args.metric, fields=str(args.fields), **kw)
    if args.keep is not None:
        result.params["keep"] = args.keep

    buf = io.BytesIO()
    np.save(buf, dist)
    atomic_write_bytes(out / "distances.npy", buf.getvalue())
    result.to_json(out / "clustering.json")
    what = f"{args.metric}" + (f" (r={args.r:g})" if kw else "")
    plot_distance_matrix(dist, result.labels, out / "distances.png",
                         title=f"{what} distances, layer {rf.layer}, ordered by cluster")
    plot_clusters(rf, result, out / "clusters.png",
                  title=f"layer {rf.layer}: {result.n_filters} filters -> {result.n_clusters} clusters "
                        f"({what}, {args.method})")
    eps = result.params.get("eps")
    print(f"layer {rf.layer}: {result.n_filters} filters -> {result.n_clusters} clusters "
          f"({what}, {args.method}{f', eps {eps:.4g}' if eps is not None else ''}) -> {out}")
    print("labels: " + " ".join(str(v) for v in result.labels.tolist()))
    return 0
