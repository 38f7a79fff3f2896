"""poam.json: the OSCAL Plan of Action and Milestones for every failing and waived control.

One POA&M item per rule that failed (or was waived) for some resource: it names the controls, the
resources, the remediation and, for a waiver, who approved it and until when. Each item has an
observation per finding and one risk: `open` while any finding of the rule fails, else
`deviation-approved` with the earliest waiver expiry as its deadline; its planned remediation is
the rule's. Controls that were only not assessed are not in it (the assessment results say so).
"""

from __future__ import annotations

from itertools import groupby
from typing import Any

from aifactory.audit.catalog import OSCAL_VERSION
from aifactory.audit.controls import oscal_control_id, sort_key
from aifactory.audit.model import FAIL, WAIVED, AuditReport, Finding, content_uuid
from aifactory.audit.oscal import SSP_FILE, one_line, prop


def _uuid(report: AuditReport, *parts: str) -> str:
    return content_uuid(report.report_id, "poam", *parts)


def _deadline(expires: str) -> str:
    return f"{expires}T23:59:59Z" if len(expires) == 10 else expires


def _observation(report: AuditReport, finding: Finding) -> dict[str, Any]:
    return {
        "uuid": _uuid(report, "observation", finding.id),
        "title": one_line(f"{finding.rule}: {finding.resource}"),
        "description": finding.message or finding.title or finding.rule,
        "props": [prop("status", finding.status), prop("severity", finding.severity)],
        "methods": ["TEST"],
        "types": ["finding"],
        "subjects": [
            {
                "subject-uuid": content_uuid("resource", finding.resource),
                "type": "resource",
                "title": one_line(finding.resource),
            }
        ],
        "collected": report.generated,
    }


def _risk(report: AuditReport, rule: str, findings: list[Finding]) -> dict[str, Any]:
    first = findings[0]
    failing = [f for f in findings if f.status == FAIL]
    risk: dict[str, Any] = {
        "uuid": _uuid(report, "risk", rule),
        "title": one_line(first.title or rule),
        "description": f"{len(findings)} finding(s) of rule {rule} ({len(failing)} failing) on controls "
        f"{', '.join(first.controls) or 'none'}, severity {first.severity}.",
        "statement": one_line(
            "; ".join(sorted({f.message for f in findings if f.message})[:10]) or first.title
        ),
        "props": [prop("severity", first.severity)],
        "status": "open" if failing else "deviation-approved",
        "remediations": [
            {
                "uuid": _uuid(report, "remediation", rule),
                "lifecycle": "planned",
                "title": one_line(f"Remediate {rule}"),
                "description": first.remediation or "no remediation given by the rule",
            }
        ],
        "related-observations": [{"observation-uuid": _uuid(report, "observation", f.id)} for f in findings],
    }
    expiries = sorted(f.waiver.expires for f in findings if f.waiver and f.waiver.expires)
    if not failing and expiries:
        risk["deadline"] = _deadline(expiries[0])
    return risk


def _item(report: AuditReport, rule: str, findings: list[Finding]) -> dict[str, Any]:
    first = findings[0]
    controls = sorted({c for f in findings for c in f.controls}, key=sort_key)
    props = [prop("rule", rule), prop("severity", first.severity)]
    props += [prop("control", oscal_control_id(c)) for c in controls]
    waivers = sorted(
        {(f.waiver.approved_by, f.waiver.expires, f.waiver.reason) for f in findings if f.waiver}
    )
    remarks = "; ".join(f"waived by {who} until {until}: {why}" for who, until, why in waivers)
    item: dict[str, Any] = {
        "uuid": _uuid(report, "item", rule),
        "title": one_line(f"{', '.join(controls)}: {first.title or rule}"),
        "description": f"Resources: {', '.join(sorted({f.resource for f in findings}))}. "
        f"Remediation: {first.remediation or 'none given'}",
        "props": props,
        "related-observations": [{"observation-uuid": _uuid(report, "observation", f.id)} for f in findings],
        "related-risks": [{"risk-uuid": _uuid(report, "risk", rule)}],
    }
    if remarks:
        item["remarks"] = remarks
    return item


def poam_groups(report: AuditReport) -> list[tuple[str, list[Finding]]]:
    """Failing and waived findings by rule, rules in name order, findings in report order."""
    open_findings = sorted((f for f in report.findings if f.status in (FAIL, WAIVED)), key=lambda f: f.rule)
    return [(rule, list(items)) for rule, items in groupby(open_findings, key=lambda f: f.rule)]


def build_poam(report: AuditReport) -> dict[str, Any]:
    site = report.site
    groups = poam_groups(report)
    document: dict[str, Any] = {
        "uuid": _uuid(report, "poam"),
        "metadata": {
            "title": one_line(f"Plan of action and milestones: site {site['name']}"),
            "last-modified": report.generated,
            "version": report.report_id,
            "oscal-version": OSCAL_VERSION,
            "props": [prop("classification", report.classification), prop("report-id", report.report_id)],
        },
        "import-ssp": {"href": SSP_FILE},
        "system-id": {
            "identifier-type": "https://ietf.org/rfc/rfc4122",
            "id": content_uuid("ssp", str(site["name"]), "system"),
        },
    }
    if groups:
        document["observations"] = [_observation(report, f) for _, findings in groups for f in findings]
        document["risks"] = [_risk(report, rule, findings) for rule, findings in groups]
    document["poam-items"] = [_item(report, rule, findings) for rule, findings in groups] or [
        {  # OSCAL requires one item: say plainly that there is nothing to plan
            "uuid": _uuid(report, "item", "none"),
            "title": "No failing or waived control",
            "description": f"The audit of {report.generated} found no failing or waived control.",
        }
    ]
    return {"plan-of-action-and-milestones": document}
