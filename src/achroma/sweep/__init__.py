"""Budgets x methods x repairs on one model and one data set: a resumable table and Pareto plots.

    >>> from achroma.sweep import Sweep, SweepConfig
    >>> sweep = Sweep(model, "cifar", train_set, test_set, "runs/sweep",
    ...               SweepConfig(targets=[0.5, 0.3], methods=["fields", "l1"], repairs=["none", "ls-refit"]))
    >>> records = sweep.run()          # a killed run, started again, skips every finished point
"""
from .run import Sweep, SweepConfig, grid_keys, parse_shard, report_points, shard_keys
from .store import PointKey, ResultStore
from .tables import render_markdown, write_tables

__all__ = ["PointKey", "ResultStore", "Sweep", "SweepConfig", "grid_keys", "parse_shard", "render_markdown",
           "report_points", "shard_keys", "write_tables"]
