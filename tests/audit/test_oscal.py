"""The OSCAL Assessment Results load in compliance-trestle, and say what the policy check said."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from auditfixtures import NATIONAL, TIMESTAMP
from trestle.oscal.assessment_results import AssessmentResults

from aifactory.audit import ReportOptions, WrittenReport, produce_report
from aifactory.audit.controls import oscal_control_id
from aifactory.plan import plan_site
from aifactory.policy import check_site


def _plain(value: object) -> str:
    """An OSCAL enum or token as its text (trestle wraps them in enums and root models)."""
    while hasattr(value, "root") or hasattr(value, "value"):
        value = getattr(value, "root", None) or value.value
    return str(value)


def _load(report: WrittenReport) -> AssessmentResults:
    return AssessmentResults.oscal_read(report.folder / "assessment-results.json")


def test_every_failed_policy_control_is_a_not_satisfied_finding(
    failing_site: Path, failing_report: WrittenReport
) -> None:
    today = dt.date.fromisoformat(TIMESTAMP[:10])
    policy = check_site(plan_site(failing_site, write_lock=False), today=today)
    failed = {c.id for c in policy.controls if c.status == "fail"}
    assert len(failed) >= 2, "the fixture must fail several controls"
    result = _load(failing_report).results[0]
    by_target = {f.target.target_id: f for f in result.findings}
    observations = {o.uuid: o for o in result.observations}
    for control in failed:
        finding = by_target[f"{oscal_control_id(control)}_obj"]
        assert finding.target.status.state.value == "not-satisfied"
        cited = {
            p.value
            for u in finding.related_observations
            for p in observations[u.observation_uuid].props or []
            if p.name == "rule"
        }
        failing_rules = {f.rule for f in policy.findings if f.status == "fail" and control in f.controls}
        assert failing_rules <= cited
    reviewed = {c.control_id for c in result.reviewed_controls.control_selections[0].include_controls}
    assert {oscal_control_id(c.id) for c in policy.controls} <= reviewed


def test_waivers_are_risks_with_approver_and_expiry(failing_report: WrittenReport) -> None:
    result = _load(failing_report).results[0]
    assert result.risks, "the fixture waives one finding"
    risk = result.risks[0]
    assert _plain(risk.status) == "deviation-approved"
    props = {p.name: p.value for p in risk.props}
    assert props == {"approved-by": "ciso@lab.example", "expires": "2030-06-30"}
    assert risk.deadline.isoformat().startswith("2030-06-30")
    waived = [f for f in result.findings if f.related_risks]
    assert waived and all(f.target.status.state.value == "not-satisfied" for f in waived)


def test_missing_evidence_is_never_satisfied(lab_report: WrittenReport) -> None:
    """Before deploy there is no deploy record and no decision log: those controls are not assessed."""
    data = json.loads((lab_report.folder / "report.json").read_text())
    not_assessed = {c["id"] for c in data["controls"] if c["status"] == "not-assessed"}
    assert {"CM-2", "CM-8"} <= not_assessed
    result = _load(lab_report).results[0]
    states = {f.target.target_id: f.target.status.state.value for f in result.findings}
    assert all(states[f"{oscal_control_id(c)}_obj"] == "not-satisfied" for c in not_assessed)


def test_national_example_report(tmp_path: Path) -> None:
    if not NATIONAL.exists():
        pytest.skip("the national example is not in this checkout")
    written = produce_report(NATIONAL, tmp_path / "report", ReportOptions(timestamp=TIMESTAMP))
    result = _load(written).results[0]
    assert len(result.findings) == len(written.report.controls)
    assert written.report.site["hosts"] > 1000
    assert written.report.site["plan_digest"] == plan_site(NATIONAL, write_lock=False).plan.digest()
    assert (tmp_path / "report" / "report.html").stat().st_size > 0
