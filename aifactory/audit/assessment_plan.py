"""assessment-plan.json: the OSCAL Assessment Plan that assessment-results.json imports.

It imports the SSP (ssp.json beside it), reviews every control the SSP implements, takes every
component as a subject, and defines one activity per kind of evidence `aifactory audit report`
gathers (each with the controls it assesses and the steps it takes), run by one task: the audit
itself. It depends on the plan and the control model, not on what the assessment found.
"""

from __future__ import annotations

from typing import Any

from aifactory.audit.catalog import OSCAL_VERSION, load_catalog
from aifactory.audit.controls import IMPLEMENTATIONS, ROLES, oscal_control_id, sort_key
from aifactory.audit.model import AuditReport, Evidence, content_uuid
from aifactory.audit.oscal import SSP_FILE, one_line, prop

# What each evidence source does, as assessment steps (method: TEST runs a check, EXAMINE reads a record).
ACTIVITIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "policy": (
        "TEST",
        (
            "Plan the site from its spec.",
            "Evaluate every Rego policy package against the plan, as of the report's date.",
            "Apply the approved, unexpired waivers; record every finding with its resource and remediation.",
        ),
    ),
    "bundle": (
        "TEST",
        (
            "Check that the imported bundle's manifest is the one verified at import (digest).",
            "Check every payload file against the manifest's SHA-256; with a trust file, its signature.",
            "Check that the bundle was built for the site's current plan.",
        ),
    ),
    "deploy": (
        "EXAMINE",
        (
            "Read the deploy record of every host.",
            "Check that every planned host, and no other, has a record.",
            "Check that each pool's hosts share one baseline, deployed from the current plan.",
        ),
    ),
    "operator-log": (
        "EXAMINE",
        ("Verify the operator log's hash chain.", "Check that it holds records."),
    ),
    "decision-logs": (
        "EXAMINE",
        ("Verify each decision log's hash chain and signed heads.", "Check that they hold records."),
    ),
    "host-scan": (
        "TEST",
        (
            "Evaluate every host with OpenSCAP and the bundle's SCAP content against its profile, offline.",
            "Digest each host's ARF result; map failing rules to SP 800-53 controls by its references.",
            "Weigh failures against the reviewed SCAP waivers; a stale or expired waiver is a finding.",
        ),
    ),
    "models": (
        "TEST",
        (
            "Verify each model's champion with model-signing against the site's model-signing key, offline.",
            "Verify every promotion record's ECDSA signature and its chain to the record before it.",
        ),
    ),
    "datasets": (
        "TEST",
        (
            "Verify each dataset version's manifest, its files' SHA-256s and its lineage with the site key.",
            "List every erasure: when, by whom, on whose authority, which files were destroyed.",
        ),
    ),
    "ai": (
        "TEST",
        (
            "For each model with a loop: read its registry's promotion records, its loop turns and the "
            "canary rollback records beside the registry.",
            "Verify each loop promotion's signed promotion decision, and each refused turn's, with the "
            "site's model-signing key.",
            "Check that the champion carries the sign-off its loop requires, and that no file of the "
            "evaluation set is in its training manifest.",
            "Verify the champion's lineage back to its dataset versions (aifactory.loop.lineage).",
            "Verify each canary rollback record against the serving nodes' decision-log keys.",
        ),
    ),
    "rotations": (
        "EXAMINE",
        (
            "Read the operator log's rotate records: who, when, what, old and new fingerprints, phases.",
            "Check that no rotation was left between phases (hosts trusting different keys).",
            "Check that the token key and the site CA in use are the ones the latest rotations installed.",
        ),
    ),
    "backups": (
        "EXAMINE",
        (
            "Read the operator log's backup and restore records.",
            "Check that the latest backup attempt wrote its file.",
            "Where that file is still on the control host, check its SHA-256 against the record and its "
            "signature against the site's backup key.",
        ),
    ),
    "changes": (
        "EXAMINE",
        (
            "Read the operator log's upgrade and rollback records, grouped by run.",
            "Check that every change has its outcome (finished, batch reverted or aborted) on record.",
            "For every rollback, check that the activation record it cites is unchanged (SHA-256), names "
            "the site, version and digest it went back to, was signed within 24 hours before it began, "
            "and verifies against the bundle trust file (ssh-keygen -Y verify -n aifactory-activation).",
            "From the deploy record, list each bundle version with the hosts that run it.",
        ),
    ),
}


def _uuid(report: AuditReport, *parts: str) -> str:
    site = report.site
    return content_uuid(
        "assessment-plan", str(site["name"]), str(site.get("spec_digest")), report.generated, *parts
    )


def reviewed_control_ids(report: AuditReport) -> list[str]:
    """What the SSP implements and the assessment reviews: the control model and what was reported,
    as long as the catalog has it."""
    catalog = load_catalog()
    ids = {*IMPLEMENTATIONS, *(c.id for c in report.controls)}
    return sorted((i for i in ids if catalog.get(i) is not None), key=sort_key)


def _activity(report: AuditReport, section: Evidence) -> dict[str, Any]:
    method, steps = ACTIVITIES.get(section.name, ("EXAMINE", (f"Examine the {section.title.lower()}.",)))
    controls = sorted(
        {c for c, _ in section.rules} | {c for f in section.findings for c in f.controls}, key=sort_key
    )
    activity: dict[str, Any] = {
        "uuid": _uuid(report, "activity", section.name),
        "title": one_line(f"{method.capitalize()}: {section.title}"),
        "description": f"Gather and assess the evidence of the {section.title.lower()}.",
        "props": [{"name": "method", "value": method}],
        "steps": [
            {
                "uuid": _uuid(report, "step", section.name, str(n)),
                "title": one_line(step),
                "description": step,
            }
            for n, step in enumerate(steps, start=1)
        ],
        "responsible-roles": [{"role-id": "auditor"}],
    }
    if controls:
        activity["related-controls"] = {
            "control-selections": [
                {"include-controls": [{"control-id": oscal_control_id(c)} for c in controls]}
            ]
        }
    return activity


def build_assessment_plan(report: AuditReport) -> dict[str, Any]:
    site = report.site
    activities = [_activity(report, section) for section in report.evidence]
    every_component = [{"type": "component", "include-all": {}}]
    task = {
        "uuid": _uuid(report, "task", "audit-report"),
        "type": "action",
        "title": "aifactory audit report",
        "description": "Plan the site, check its policies, gather the evidence every stage left, and write "
        "the signed report, its assessment results and POA&M.",
        "timing": {"on-date": {"date": report.generated}},
        "associated-activities": [
            {"activity-uuid": a["uuid"], "subjects": every_component} for a in activities
        ],
        "responsible-roles": [{"role-id": "auditor"}],
    }
    return {
        "assessment-plan": {
            "uuid": _uuid(report, "plan"),
            "metadata": {
                "title": one_line(f"Assessment plan: site {site['name']}"),
                "last-modified": report.generated,
                "version": str(site.get("spec_digest")),
                "oscal-version": OSCAL_VERSION,
                "props": [prop("classification", report.classification)],
                "roles": [{"id": role, "title": title} for role, title in ROLES.items()],
            },
            "import-ssp": {"href": SSP_FILE},
            "local-definitions": {"activities": activities},
            "reviewed-controls": {
                "control-selections": [
                    {
                        "include-controls": [
                            {"control-id": oscal_control_id(c)} for c in reviewed_control_ids(report)
                        ]
                    }
                ]
            },
            "assessment-subjects": [
                {"type": "component", "description": "Every component of the SSP.", "include-all": {}}
            ],
            "tasks": [task],
        }
    }
