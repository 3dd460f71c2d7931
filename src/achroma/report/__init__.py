"""Reports of a compression run: the notebook's Table 3 (plus the matched-repair row) and costs.

    >>> from achroma.report import build_report, render_markdown
    >>> report = build_report(result)          # result from achroma.pipeline.compress
    >>> print(render_markdown(report))
"""
from ..costs import MACS_METHOD, count_macs, flop_counter_flops
from ..deploy.latency import measure_latencies, measure_latency
from .metrics import classification_metrics, plot_confusion, predict_proba
from .outputs import layer_file_stem, write_outputs
from .table import build_report, render_markdown, write_report

__all__ = ["MACS_METHOD", "build_report", "classification_metrics", "plot_confusion", "predict_proba", "count_macs", "flop_counter_flops", "layer_file_stem",
           "measure_latencies", "measure_latency", "render_markdown", "write_outputs", "write_report"]
