"""`aifactory audit diff` shows drift between two audits; the CLI renders reports and log checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from auditfixtures import TIMESTAMP, failing_spec

from aifactory.audit import ReportOptions, produce_report
from aifactory.audit.diff import diff_reports
from aifactory.cli.main import main
from aifactory.plan import plan_site
from aifactory.state import SiteState


def test_fixing_encryption_shows_as_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = produce_report(
        plan_site(failing_spec(tmp_path / "v1", name="labdiff"), write_lock=False),
        tmp_path / "r1",
        ReportOptions(timestamp=TIMESTAMP),
    )
    fixed = failing_spec(tmp_path / "v2", name="labdiff", fix_encryption=True)
    after = produce_report(
        plan_site(fixed, write_lock=False), tmp_path / "r2", ReportOptions(timestamp="2026-11-29T09:00:00Z")
    )
    drift = diff_reports(before.folder, after.folder)
    assert drift.drifted
    assert {(c["id"], c["old"], c["new"]) for c in drift.controls} == {("SC-28(1)", "fail", "pass")}
    resolved = [(f["rule"], f["resource"]) for f in drift.resolved]
    assert resolved == [("encryption.unencrypted_storage", "storage/share")]
    assert drift.added == [] and drift.changed == []
    assert diff_reports(before.folder, before.folder / "report.json").drifted is False
    assert main(["audit", "diff", str(before.folder), str(after.folder), "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["controls"] == drift.controls


def test_diff_refuses_what_is_not_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "report.json").write_text('{"schema": "something/else"}')
    assert main(["audit", "diff", str(tmp_path), str(tmp_path)]) == 1
    assert "not an aifactory audit report" in capsys.readouterr().err


def test_report_command_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = failing_spec(tmp_path / "spec", name="labcli")
    args = ["audit", "report", str(spec), "-o", str(tmp_path / "out"), "--timestamp", TIMESTAMP]
    assert main([*args, "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["classification"] == "confidential" and shown["totals"]["fail"] >= 2
    assert main([*args, "--strict"]) == 1  # failing controls, and --strict asked to exit non-zero on them
    assert "SC System and Communications Protection" in capsys.readouterr().out


def test_verify_log_checks_the_operator_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = SiteState.for_site("labverifylog")
    for command in ("plan", "deploy"):
        state.record(command=command, result="ok")
    assert main(["audit", "verify-log", str(state.operator_log)]) == 0
    text = state.operator_log.read_text().replace('"command":"plan"', '"command":"plot"')
    state.operator_log.write_text(text)
    assert main(["audit", "verify-log", str(state.operator_log)]) == 1
    assert "was edited" in capsys.readouterr().out
