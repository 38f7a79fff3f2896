"""`aifactory audit diff OLD NEW`: drift between two audits of a site.

Controls whose status changed, findings added, resolved or changed status (a finding is the same
finding when its rule and resource are). Reads report.json from each report folder (or the file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.errors import AuditError, Location


@dataclass(frozen=True)
class AuditDiff:
    old: dict[str, Any]  # id, site, generated of each report
    new: dict[str, Any]
    controls: list[dict[str, Any]]  # {id, title, old, new}
    added: list[dict[str, Any]]
    resolved: list[dict[str, Any]]
    changed: list[dict[str, Any]]  # findings whose status changed (e.g. fail -> waived)

    @property
    def drifted(self) -> bool:
        return bool(self.controls or self.added or self.resolved or self.changed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "old": self.old,
            "new": self.new,
            "drifted": self.drifted,
            "controls": self.controls,
            "findings_added": self.added,
            "findings_resolved": self.resolved,
            "findings_changed": self.changed,
        }


def load_report_json(location: Path) -> dict[str, Any]:
    path = location / "report.json" if location.is_dir() else location
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise AuditError(
            f"cannot read {path}: {exc.strerror}",
            location=Location(file=str(path)),
            hint="give a report folder or its report.json",
        ) from None
    except ValueError as exc:
        raise AuditError(f"{path} is not JSON: {exc}", location=Location(file=str(path))) from None
    if not isinstance(data, dict) or not str(data.get("schema", "")).startswith("aifactory.audit-report/"):
        raise AuditError(f"{path} is not an aifactory audit report", location=Location(file=str(path)))
    return data


def _about(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": report.get("id"),
        "site": (report.get("site") or {}).get("name"),
        "generated": report.get("generated"),
    }


def _findings(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(str(f.get("rule")), str(f.get("resource"))): f for f in report.get("findings") or []}


def _brief(finding: dict[str, Any]) -> dict[str, Any]:
    return {k: finding.get(k) for k in ("rule", "resource", "status", "controls", "severity", "message")}


def diff_reports(old_location: Path, new_location: Path) -> AuditDiff:
    old, new = load_report_json(old_location), load_report_json(new_location)
    old_controls = {c["id"]: c for c in old.get("controls") or []}
    new_controls = {c["id"]: c for c in new.get("controls") or []}
    controls = []
    for control_id in [*old_controls, *(c for c in new_controls if c not in old_controls)]:
        before = old_controls.get(control_id, {}).get("status", "absent")
        after = new_controls.get(control_id, {}).get("status", "absent")
        if before != after:
            title = (new_controls.get(control_id) or old_controls[control_id]).get("title", "")
            controls.append({"id": control_id, "title": title, "old": before, "new": after})
    old_findings, new_findings = _findings(old), _findings(new)
    added = [_brief(f) for key, f in new_findings.items() if key not in old_findings]
    resolved = [_brief(f) for key, f in old_findings.items() if key not in new_findings]
    changed = [
        {**_brief(f), "old_status": old_findings[key].get("status")}
        for key, f in new_findings.items()
        if key in old_findings and old_findings[key].get("status") != f.get("status")
    ]
    return AuditDiff(_about(old), _about(new), controls, added, resolved, changed)
