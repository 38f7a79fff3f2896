"""report.html stays usable and is written in bounded memory when findings run into thousands."""

from __future__ import annotations

import dataclasses
import re
import tracemalloc
from pathlib import Path

from aifactory.audit import WrittenReport
from aifactory.audit.html import OPEN_FINDINGS_BELOW, write_html
from aifactory.audit.model import AuditReport, Finding


def _with_findings(report: AuditReport, count: int) -> AuditReport:
    """The fixture's report with `count` findings spread over 7 rules (as a large site would have)."""
    template = report.findings[0]
    findings = tuple(
        dataclasses.replace(
            template,
            rule=f"{template.rule}_{index % 7}",
            resource=f"dataset/data{index:05d}",
            message=f"{template.message} (copy {index})",
        )
        for index in range(count)
    )
    return dataclasses.replace(report, findings=findings)


def _groups(html: str) -> list[str]:
    return re.findall(r'<details class="finding-group"[^>]*>', html)


def test_few_findings_start_open(failing_report: WrittenReport) -> None:
    html = (failing_report.folder / "report.html").read_text()
    groups = _groups(html)
    assert groups and all(" open" in tag for tag in groups)


def test_many_findings_are_grouped_and_collapsed(failing_report: WrittenReport, tmp_path: Path) -> None:
    report = _with_findings(failing_report.report, OPEN_FINDINGS_BELOW * 40)
    write_html(report, tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    groups = _groups(html)
    assert len(groups) == 7 and not any(" open" in tag for tag in groups)
    assert html.count('<tr id="finding-') == OPEN_FINDINGS_BELOW * 40


def test_written_as_a_stream(failing_report: WrittenReport, tmp_path: Path) -> None:
    report = _with_findings(failing_report.report, 5000)
    report.report_id  # noqa: B018  (computed before measuring: it is part of the model, not the writer)
    tracemalloc.start()
    write_html(report, tmp_path / "report.html")
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    size = (tmp_path / "report.html").stat().st_size
    assert size > 1_500_000
    assert peak < size / 4, f"writing a {size:,}-byte page held {peak:,} bytes at its peak"


def test_findings_are_escaped(failing_report: WrittenReport, tmp_path: Path) -> None:
    hostile: Finding = dataclasses.replace(
        failing_report.report.findings[0], resource='storage/<script>alert("x")</script>'
    )
    write_html(dataclasses.replace(failing_report.report, findings=(hostile,)), tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
