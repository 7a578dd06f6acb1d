"""Cross-domain benchmarks: suites of transfer runs over fusions, adaptations and seeds,
summarised as mean and 95% CI with paired comparisons, as CSV, JSON, Markdown and PNG.

The rooms: ``plan`` (suites, units, their run configs), ``run`` (units run and stored),
``store`` (result rows, results.csv), ``stats`` (the rows summarised: CIs, paired tests,
Holm), ``report`` (tables and files), ``plots``, ``compare`` (a rerun against a reference)
and ``command`` (what ``multimodal bench`` and ``benchmarks/cross_domain.py`` run).
"""

from __future__ import annotations

from ..stats import mean_ci, paired_comparison  # the statistics, re-exported
from .compare import COMPARE_TOLERANCE, compare_results, comparison_table
from .plan import Suite, Unit, find_suite, load_suite, plan, prepare_data, unit_config
from .plots import plot_summary, plot_utilisation
from .report import (
    imbalance_table,
    robustness_table,
    summary_table,
    table_note,
    write_results,
    write_robustness,
)
from .run import log_unit, run_benchmark, run_unit_reports
from .stats import ROW_KEYS, overall_entries, summarize, summarize_robustness, unimodal
from .store import ResultRow, read_results, result_rows, robustness_rows, write_csv

__all__ = [
    "COMPARE_TOLERANCE",
    "ROW_KEYS",
    "ResultRow",
    "Suite",
    "Unit",
    "compare_results",
    "comparison_table",
    "find_suite",
    "imbalance_table",
    "load_suite",
    "log_unit",
    "mean_ci",
    "overall_entries",
    "paired_comparison",
    "plan",
    "plot_summary",
    "plot_utilisation",
    "prepare_data",
    "read_results",
    "result_rows",
    "robustness_rows",
    "robustness_table",
    "run_benchmark",
    "run_unit_reports",
    "summarize",
    "summarize_robustness",
    "summary_table",
    "table_note",
    "unimodal",
    "unit_config",
    "write_csv",
    "write_results",
    "write_robustness",
]
