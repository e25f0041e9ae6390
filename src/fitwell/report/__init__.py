"""The run report: one self-contained ``report.html`` built from a finished run directory."""

from fitwell.report.build import REPORT_FILE, build_report, write_report

__all__ = ["REPORT_FILE", "build_report", "write_report"]
