"""Comparison reports: aggregate results over seeds, tables, plots, one self-contained HTML page.

Input is only the list of result dicts defined in docs/contracts.md ("Result"); nothing here
imports training or evaluation code, so a report can be (re)built anywhere from stored results.
"""

from .aggregate import Aggregate, Group, Stats, Winner, aggregate, how_sure, summarize, winners
from .build import write_report, write_report_from_store
from .pareto import pareto_front

__all__ = [
    "Aggregate",
    "Group",
    "Stats",
    "aggregate",
    "pareto_front",
    "summarize",
    "Winner",
    "how_sure",
    "winners",
    "write_report",
    "write_report_from_store",
]
