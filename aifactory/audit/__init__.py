"""Audit: gather evidence from every stage, write a signed report (HTML, JSON, OSCAL), verify, diff."""

from aifactory.audit.model import AuditReport
from aifactory.audit.report import ReportOptions, WrittenReport, produce_report

__all__ = ["AuditReport", "ReportOptions", "WrittenReport", "produce_report"]
