"""Comparison reports: aggregate results over seeds, tables, plots, one self-contained HTML page.

Input is only the list of result dicts defined in docs/contracts.md ("Result") and, optionally, each
run's per-example scores, samples and config.yaml; nothing here imports training or evaluation code,
so a report can be (re)built anywhere from stored results.
"""

from .aggregate import (
    Aggregate,
    Group,
    Stats,
    Winner,
    aggregate,
    error_line,
    example_view,
    how_sure,
    run_config,
    summarize,
    winners,
)
from .build import write_report, write_report_from_store
from .pareto import Recommendation, pareto_front, recommend, recommendation_text

__all__ = [
    "Aggregate",
    "Group",
    "Recommendation",
    "Stats",
    "aggregate",
    "error_line",
    "example_view",
    "pareto_front",
    "recommend",
    "recommendation_text",
    "run_config",
    "summarize",
    "Winner",
    "how_sure",
    "winners",
    "write_report",
    "write_report_from_store",
]
