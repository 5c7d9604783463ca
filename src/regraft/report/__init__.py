"""Pictures and pages for runs: curves, confusion matrix, top losses, samples, comparison, HTML.

``report`` draws runs and never starts them: every function takes plain data (metrics rows,
arrays, summary dicts) or a finished run folder, writes a PNG, Markdown or HTML file, and
returns its path. matplotlib is used through explicit Agg canvases, so importing or calling
this package never changes a user's matplotlib backend or pyplot state.

Example:
    >>> from regraft import report
    >>> report.plot_curves(rows, "runs/exp1/curves.png")                  # doctest: +SKIP
    >>> report.write_html_report("runs/exp1")                              # doctest: +SKIP
    >>> print(report.verdict([scratch, full], predictions=preds))            # doctest: +SKIP
    pretrained beats scratch by 9.6 points (full 93.9% vs scratch 84.3%; exact McNemar p<0.001, n=400)
"""

from __future__ import annotations

from regraft.report._figure import ReportError
from regraft.report._run import confusion_matrix, draw_run, to_image
from regraft.report.confusion import plot_confusion
from regraft.report.grids import plot_samples, plot_top_losses
from regraft.report.html import render_html_report, write_html_report
from regraft.report.plots import plot_comparison, plot_curves, plot_lr_find
from regraft.report.stats import (
    PairedTest,
    ValPredictions,
    mcnemar_exact,
    paired_tests,
    read_val_predictions,
)
from regraft.report.tables import comparison_markdown
from regraft.report.verdict import pairwise_markdown, verdict

__all__ = [
    "ReportError",
    "plot_curves",
    "plot_confusion",
    "plot_top_losses",
    "plot_samples",
    "plot_comparison",
    "plot_lr_find",
    "comparison_markdown",
    "verdict",
    "pairwise_markdown",
    "read_val_predictions",
    "paired_tests",
    "mcnemar_exact",
    "PairedTest",
    "ValPredictions",
    "write_html_report",
    "render_html_report",
    "draw_run",
    "confusion_matrix",
    "to_image",
]
