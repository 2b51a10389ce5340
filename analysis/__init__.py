"""Analysis of a study's results: correlations, overfitting, scaling fits, the report.

``write_report(source, out_dir, png=False)`` is the entry point (see
:mod:`analysis.report`); input columns are documented in :mod:`analysis.table`.
It is imported lazily so that importing ``analysis.cli`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AnalysisError", "write_report"]


def __getattr__(name: str) -> Any:
    if name == "write_report":
        from analysis.report import write_report

        return write_report
    if name == "AnalysisError":
        from analysis.errors import AnalysisError

        return AnalysisError
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
