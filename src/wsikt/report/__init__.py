"""The self-contained HTML report."""

from wsikt.report.build import ReportInputs, ReportOutputs, ReportSettings, build_report

__all__ = ["ReportInputs", "ReportOutputs", "ReportSettings", "build_report"]
