"""assessment-results.json: the report as OSCAL Assessment Results (validated with compliance-trestle),
and what every OSCAL writer shares (props, validation, writing).

One result holds: the reviewed controls; an observation per finding and per evidence section; a risk
per waiver (status deviation-approved, deadline = the waiver's expiry, approver as a property); and a
finding per control whose target status is satisfied (pass) or not-satisfied (fail, waived, and not
assessed: missing evidence is never a pass). Every UUID is a uuid5 of content; every time is the
report's timestamp.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aifactory.audit.controls import oscal_control_id
from aifactory.audit.model import (
    FAIL,
    NOT_ASSESSED,
    PASS,
    WAIVED,
    AuditReport,
    Control,
    Evidence,
    Finding,
    content_uuid,
)
from aifactory.errors import AuditError

NS = "https://github.com/aifactory/aifactory/ns/oscal"
OSCAL_VERSION = "1.2.1"
# The OSCAL files of a report folder, and how they refer to each other (relative hrefs).
SSP_FILE, AP_FILE, AR_FILE, POAM_FILE, PROFILE_FILE = (
    "ssp.json",
    "assessment-plan.json",
    "assessment-results.json",
    "poam.json",
    "profile.json",
)
REASONS = {PASS: "pass", FAIL: "fail", WAIVED: "fail", NOT_ASSESSED: "other"}


def prop(name: str, value: str) -> dict[str, str]:
    return {"name": name, "ns": NS, "value": value}


def one_line(text: str) -> str:
    return " ".join(text.split()) or "-"


def _finding_observation(report_id: str, finding: Finding, collected: str) -> dict[str, Any]:
    return {
        "uuid": content_uuid(report_id, "observation", finding.id),
        "title": one_line(f"{finding.rule}: {finding.resource}"),
        "description": finding.message or finding.title or finding.rule,
        "props": [
            prop("rule", finding.rule),
            prop("severity", finding.severity),
            prop("status", finding.status),
            prop("source", finding.source),
        ],
        "methods": ["TEST"],
        "types": ["finding"],
        "subjects": [
            {
                "subject-uuid": content_uuid("resource", finding.resource),
                "type": "resource",
                "title": one_line(finding.resource),
            }
        ],
        "collected": collected,
        "remarks": "Remediation: " + (finding.remediation or "none given"),
    }


def _evidence_observation(report_id: str, section: Evidence, collected: str) -> dict[str, Any]:
    return {
        "uuid": content_uuid(report_id, "evidence", section.name),
        "title": one_line(section.title),
        "description": section.summary or section.title,
        "props": [prop("evidence", section.name), prop("status", section.status)],
        "methods": ["EXAMINE" if section.name in ("deploy", "operator-log", "decision-logs") else "TEST"],
        "types": ["control-objective"],
        "relevant-evidence": [
            {
                "href": f"report.json#/evidence/{section.name}",
                "description": f"the {section.title.lower()} section of report.json",
            }
        ],
        "collected": collected,
    }


def _risk(report_id: str, finding: Finding, observation: str) -> dict[str, Any]:
    waiver = finding.waiver
    assert waiver is not None
    risk: dict[str, Any] = {
        "uuid": content_uuid(report_id, "risk", finding.id),
        "title": one_line(f"Waived: {finding.rule} on {finding.resource}"),
        "description": finding.message or finding.title,
        "statement": waiver.reason or "waived without a stated reason",
        "props": [
            prop("approved-by", waiver.approved_by or "unknown"),
            prop("expires", waiver.expires or "unknown"),
        ],
        "status": "deviation-approved",
        "related-observations": [{"observation-uuid": observation}],
    }
    if waiver.expires:
        risk["deadline"] = f"{waiver.expires}T23:59:59Z" if len(waiver.expires) == 10 else waiver.expires
    return risk


def _control_finding(
    report_id: str, control: Control, observations: list[str], risks: list[str]
) -> dict[str, Any]:
    state = "satisfied" if control.status == PASS else "not-satisfied"
    rules = "; ".join(f"{r.id}: {r.status}" + (f" ({r.note})" if r.note else "") for r in control.rules)
    finding: dict[str, Any] = {
        "uuid": content_uuid(report_id, "control", control.id),
        "title": one_line(f"{control.id} {control.title}".strip()),
        "description": f"{control.id} is {control.status.replace('-', ' ')}. Rules: {rules or 'none'}.",
        "props": [prop("status", control.status)],
        "target": {
            "type": "objective-id",
            "target-id": f"{oscal_control_id(control.id)}_obj",
            "status": {"state": state, "reason": REASONS[control.status]},
        },
    }
    if control.status == NOT_ASSESSED:
        finding["target"]["status"]["remarks"] = "not assessed: the evidence for this control does not exist"
    if observations:
        finding["related-observations"] = [{"observation-uuid": u} for u in observations]
    if risks:
        finding["related-risks"] = [{"risk-uuid": u} for u in risks]
    return finding


def build_assessment_results(report: AuditReport, report_id: str) -> dict[str, Any]:
    when = report.generated
    observations = [_evidence_observation(report_id, s, when) for s in report.evidence]
    by_finding: dict[str, str] = {}
    risks = []
    risk_of: dict[str, str] = {}
    for finding in report.findings:
        observation = _finding_observation(report_id, finding, when)
        observations.append(observation)
        by_finding[finding.id] = observation["uuid"]
        if finding.status == WAIVED and finding.waiver:
            risk = _risk(report_id, finding, observation["uuid"])
            risks.append(risk)
            risk_of[finding.id] = risk["uuid"]
    evidence_uuid = {s.name: content_uuid(report_id, "evidence", s.name) for s in report.evidence}
    findings = []
    for control in report.controls:
        mine = [f for f in report.findings if control.id in f.controls]
        related = sorted({evidence_uuid[r.source] for r in control.rules if r.source in evidence_uuid})
        related += [by_finding[f.id] for f in mine]
        findings.append(
            _control_finding(report_id, control, related, [risk_of[f.id] for f in mine if f.id in risk_of])
        )
    site = report.site
    result: dict[str, Any] = {
        "uuid": content_uuid(report_id, "result"),
        "title": one_line(f"aifactory audit of site {site['name']}"),
        "description": (
            f"Policy results and evidence for site {site['name']} (jurisdiction "
            f"{site.get('jurisdiction')}), spec {site.get('spec_digest')}."
        ),
        "start": when,
        "end": when,
        "props": [
            prop("site", str(site["name"])),
            prop("classification", report.classification),
            prop("report-id", report_id),
        ],
        "reviewed-controls": {
            "control-selections": [
                {"include-controls": [{"control-id": oscal_control_id(c.id)} for c in report.controls]}
                if report.controls
                else {"include-all": {}}
            ]
        },
        "observations": observations,
        "findings": findings,
    }
    if risks:
        result["risks"] = risks
    metadata = {
        "title": one_line(f"Assessment results: site {site['name']}"),
        "last-modified": when,
        "version": report_id,
        "oscal-version": OSCAL_VERSION,
        "props": [prop("classification", report.classification)],
    }
    return {
        "assessment-results": {
            "uuid": content_uuid(report_id, "assessment-results"),
            "metadata": metadata,
            "import-ap": {"href": AP_FILE},
            "results": [result],
        }
    }


def _model(root: str) -> Any:
    """compliance-trestle's pydantic model for an OSCAL document's root key."""
    from trestle.oscal.assessment_plan import AssessmentPlan
    from trestle.oscal.assessment_results import AssessmentResults
    from trestle.oscal.poam import PlanOfActionAndMilestones
    from trestle.oscal.profile import Profile
    from trestle.oscal.ssp import SystemSecurityPlan

    return {
        "assessment-results": AssessmentResults,
        "assessment-plan": AssessmentPlan,
        "system-security-plan": SystemSecurityPlan,
        "plan-of-action-and-milestones": PlanOfActionAndMilestones,
        "profile": Profile,
    }[root]


def validate_document(document: dict[str, Any]) -> None:
    """Check an OSCAL document against compliance-trestle's OSCAL models (raises AuditError)."""
    from pydantic import ValidationError

    (root,) = document
    try:
        _model(root).model_validate(document[root])
    except ValidationError as exc:
        raise AuditError(
            f"the OSCAL {root} does not validate: {exc.errors()[0]}", code="oscal-invalid"
        ) from exc


def validate_assessment_results(document: dict[str, Any]) -> None:
    validate_document(document)


def write_document(document: dict[str, Any], path: Path) -> None:
    """Validate, then write with a fixed layout (the same document always gives the same bytes)."""
    validate_document(document)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        json.dump(document, handle, indent=1, ensure_ascii=False)
        handle.write("\n")


def write_assessment_results(report: AuditReport, report_id: str, path: Path) -> None:
    write_document(build_assessment_results(report, report_id), path)
