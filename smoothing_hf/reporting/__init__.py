"""Figures from certification results: certified accuracy at radii, ACR, abstain rate, curves, comparisons.

Reads result files (``smoothing_hf.files``: TSV rows with Cohen's columns, summary JSON) and imports no model
code, so it also reads other tools' ``certify`` outputs (Cohen et al.'s own ``certify.py`` files included).
Radii are l2 distances in [0, 1] pixel space; certified accuracies are fractions in [0, 1] (percentages in
the tables). Plots need matplotlib (``pip install smoothing_hf[examples]``); everything else numpy only.

- ``metrics``: ``summarize``, ``certified_accuracy_curve``, ``format_summary``, the ``evaluate`` metric's path;
- ``runs``: ``read_run(s)`` of output folders and TSVs, ``summarize_run``;
- ``validation``: ``read_checked_rows``, which refuses rows that contradict themselves;
- ``spaces``: where a run's radii live (its recorded space) and ranking only within one space;
- ``tables``: Markdown and LaTeX comparison tables, ``write_report``;
- ``plots``: certified accuracy against radius;
- ``cli``: ``python -m smoothing_hf.report``.
"""

from .metrics import (
    COMPARISON_RADII,
    DEFAULT_RADII,
    certified_accuracy_curve,
    certified_accuracy_metric_path,
    format_summary,
    summarize,
)
from .plots import curve_styles, plot_certified_accuracy, plot_runs
from .runs import CERTIFY_TSV, SUMMARY_JSON, Run, compare_runs, read_run, read_runs, run_label, summarize_run
from .tables import REPORT_FILES, comparison_latex, comparison_markdown, write_report
from .validation import read_checked_rows

__all__ = [
    "CERTIFY_TSV", "COMPARISON_RADII", "DEFAULT_RADII", "REPORT_FILES", "SUMMARY_JSON", "Run",
    "certified_accuracy_curve", "certified_accuracy_metric_path", "compare_runs", "comparison_latex",
    "comparison_markdown", "curve_styles", "format_summary", "plot_certified_accuracy", "plot_runs",
    "read_checked_rows", "read_run", "read_runs", "run_label", "summarize", "summarize_run", "write_report",
]
