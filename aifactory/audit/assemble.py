"""Evidence sections -> one AuditReport: controls merged across sources, findings in a stable order."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from aifactory import __version__
from aifactory.audit.catalog import load_catalog
from aifactory.audit.controls import family_of, sort_key, title_of
from aifactory.audit.model import (
    CLASSIFICATIONS,
    FAIL,
    WAIVED,
    AuditReport,
    Control,
    Evidence,
    Finding,
    RuleResult,
    Waiver,
    iso,
    worst,
)
from aifactory.plan.model import SitePlan

SEVERITIES = ("critical", "high", "medium", "low", "info")


def _finding_order(finding: Finding) -> tuple[Any, ...]:
    severity = SEVERITIES.index(finding.severity) if finding.severity in SEVERITIES else len(SEVERITIES)
    return (finding.status != FAIL, severity, finding.rule, finding.resource, finding.message)


def _title(control_id: str) -> str:
    """The control's title in the shipped NIST catalog (the fallback table for ids it lacks)."""
    found = load_catalog().get(control_id)
    return found.title if found else title_of(control_id)


def _controls(evidence: Sequence[Evidence], findings: Sequence[Finding]) -> tuple[Control, ...]:
    rules: dict[str, list[RuleResult]] = {}
    for section in evidence:
        for control_id, verdict in section.rules:
            if verdict not in rules.setdefault(control_id, []):
                rules[control_id].append(verdict)
    for finding in findings:  # a finding always shows up under each control it names
        for control_id in finding.controls:
            rules.setdefault(control_id, [])
    controls = []
    for control_id in sorted(rules, key=sort_key):
        mine = [f for f in findings if control_id in f.controls]
        statuses = [r.status for r in rules[control_id]] + [f.status for f in mine]
        waivers: list[Waiver] = []
        for finding in mine:
            if finding.waiver and finding.waiver not in waivers:
                waivers.append(finding.waiver)
        controls.append(
            Control(
                id=control_id,
                family=family_of(control_id),
                title=_title(control_id),
                status=worst(statuses),
                rules=tuple(rules[control_id]),
                findings={
                    FAIL: sum(f.status == FAIL for f in mine),
                    WAIVED: sum(f.status == WAIVED for f in mine),
                },
                waivers=tuple(waivers),
            )
        )
    return tuple(controls)


def site_data(plan: SitePlan) -> tuple[dict[str, Any], ...]:
    """The datasets and models the report names, with their classifications."""
    items = [
        {
            "kind": kind,
            "name": i.name,
            "owner": i.owner,
            "classification": i.classification,
            "storage": i.storage,
        }
        for kind, section in (("dataset", plan.datasets), ("model", plan.models))
        for i in section
    ]
    return tuple(items)


def highest_classification(data: Sequence[dict[str, Any]]) -> str:
    ranks = [
        CLASSIFICATIONS.index(d["classification"]) for d in data if d.get("classification") in CLASSIFICATIONS
    ]
    return CLASSIFICATIONS[max(ranks, default=0)]


def build_report(
    *,
    plan: SitePlan,
    evidence: Sequence[Evidence],
    timestamp: datetime,
    bundle_digest: str | None,
    signer: dict[str, str],
    plan_digest: str,
) -> AuditReport:
    findings = tuple(sorted((f for section in evidence for f in section.findings), key=_finding_order))
    data = site_data(plan)
    site = {
        "name": plan.name,
        "jurisdiction": plan.site.jurisdiction,
        "description": plan.site.description or "",
        "air_gapped": plan.site.air_gapped,
        "spec_digest": plan.spec_digest,
        "plan_digest": plan_digest,
        "hosts": len(plan.hosts),
    }
    return AuditReport(
        site=site,
        generated=iso(timestamp),
        tool_version=__version__,
        classification=highest_classification(data),
        bundle_digest=bundle_digest,
        controls=_controls(evidence, findings),
        findings=findings,
        evidence=tuple(evidence),
        logs=tuple(ref for section in evidence for ref in section.logs),
        data=data,
        signer=signer,
    )
