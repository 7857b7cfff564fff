"""The self-contained HTML report."""

from wsikt.report.build import build_report

__all__ = ["build_report"]
