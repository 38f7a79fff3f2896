"""The audit report as data: controls with their status, findings, evidence and the logs it cites.

Every writer (HTML, JSON, OSCAL) renders this one model, so the three files always say the same
thing. `AuditReport.as_dict()` is exactly what report.json holds (schema: docs/report.schema.json).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from aifactory.audit.controls import family_title
from aifactory.chain import canonical_json
from aifactory.errors import UsageError

REPORT_SCHEMA = "aifactory.audit-report/v1"

PASS, FAIL, WAIVED, NOT_ASSESSED = "pass", "fail", "waived", "not-assessed"
STATUSES = (FAIL, WAIVED, NOT_ASSESSED, PASS)  # worst first: the order summaries list them in
CLASSIFICATIONS = ("public", "internal", "confidential", "secret", "top-secret")

_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/aifactory/aifactory/audit")


def content_uuid(*parts: str) -> str:
    """A UUID derived from content (uuid5), so the same report always has the same identifiers."""
    return str(uuid.uuid5(_UUID_NAMESPACE, "\x1f".join(parts)))


def worst(statuses: list[str]) -> str:
    """A control fails if any assessment fails; it is waived if the rest pass; it passes only when
    something assessed it and nothing failed. Sources that could not assess it do not count."""
    assessed = [s for s in statuses if s != NOT_ASSESSED]
    if not assessed:
        return NOT_ASSESSED
    for status in (FAIL, WAIVED):
        if status in assessed:
            return status
    return PASS


def parse_timestamp(text: str | None) -> datetime:
    """The report's one timestamp: `text` (ISO 8601 with a zone) or now, in UTC, whole seconds."""
    if text is None:
        return datetime.now(UTC).replace(microsecond=0)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--timestamp {text!r} is not an ISO 8601 time", hint="give e.g. 2026-11-22T09:00:00Z"
        ) from None
    if value.tzinfo is None:
        raise UsageError(f"--timestamp {text!r} has no time zone", hint="end it with Z for UTC") from None
    return value.astimezone(UTC).replace(microsecond=0)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Waiver:
    reason: str
    approved_by: str
    expires: str

    def as_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "approved_by": self.approved_by, "expires": self.expires}


@dataclass(frozen=True)
class Finding:
    """One failed (or waived) rule about one resource."""

    rule: str
    title: str
    controls: tuple[str, ...]
    severity: str
    resource: str
    message: str
    remediation: str
    status: str  # fail | waived
    source: str  # the evidence that produced it: policy, bundle, deploy, operator-log, decision-logs
    waiver: Waiver | None = None

    @property
    def id(self) -> str:
        return content_uuid("finding", self.source, self.rule, self.resource, self.message)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule": self.rule,
            "title": self.title,
            "controls": list(self.controls),
            "severity": self.severity,
            "resource": self.resource,
            "message": self.message,
            "remediation": self.remediation,
            "status": self.status,
            "source": self.source,
            "waiver": self.waiver.as_dict() if self.waiver else None,
        }


@dataclass(frozen=True)
class RuleResult:
    """A rule's verdict, as one input to a control."""

    id: str
    title: str
    status: str
    source: str
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status,
            "source": self.source,
            "note": self.note,
        }


@dataclass(frozen=True)
class Control:
    id: str
    family: str
    title: str
    status: str
    rules: tuple[RuleResult, ...]
    findings: dict[str, int]  # fail / waived counts
    waivers: tuple[Waiver, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "family": self.family,
            "title": self.title,
            "status": self.status,
            "rules": [r.as_dict() for r in self.rules],
            "findings": dict(self.findings),
            "waivers": [w.as_dict() for w in self.waivers],
        }


@dataclass(frozen=True)
class LogReference:
    """A hash-chained log the report relied on, and the head it saw (re-checked by `audit verify`)."""

    kind: str  # operator-log | decision-log
    path: str
    records: int
    head_seq: int
    head_hash: str
    ok: bool
    problems: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "records": self.records,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "ok": self.ok,
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class Evidence:
    """What one stage left behind and what the audit made of it."""

    name: str  # policy | bundle | deploy | operator-log | decision-logs | host-scan | models
    title: str
    status: str  # pass | fail | not-assessed
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)
    rules: tuple[tuple[str, RuleResult], ...] = ()  # (control id, verdict) pairs
    findings: tuple[Finding, ...] = ()
    logs: tuple[LogReference, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "summary": self.summary,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class AuditReport:
    site: dict[str, Any]
    generated: str
    tool_version: str
    classification: str
    bundle_digest: str | None
    controls: tuple[Control, ...]
    findings: tuple[Finding, ...]
    evidence: tuple[Evidence, ...]
    logs: tuple[LogReference, ...]
    data: tuple[dict[str, Any], ...]  # datasets and models the site holds, with classifications
    signer: dict[str, str]  # identity and key fingerprint of the key that signs the report folder

    def summary(self) -> list[dict[str, Any]]:
        """Controls counted by family and status, families in alphabetical order."""
        families: dict[str, dict[str, int]] = {}
        for control in self.controls:
            counts = families.setdefault(control.family, dict.fromkeys(STATUSES, 0))
            counts[control.status] += 1
        return [
            {"family": family, "title": family_title(family), "controls": sum(counts.values()), **counts}
            for family, counts in sorted(families.items())
        ]

    def totals(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for control in self.controls:
            counts[control.status] += 1
        return counts

    def _body(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "site": self.site,
            "generated": self.generated,
            "tool_version": self.tool_version,
            "classification": self.classification,
            "bundle_digest": self.bundle_digest,
            "signer": dict(self.signer),
            "totals": self.totals(),
            "summary": self.summary(),
            "controls": [c.as_dict() for c in self.controls],
            "findings": [f.as_dict() for f in self.findings],
            "evidence": [e.as_dict() for e in self.evidence],
            "logs": [r.as_dict() for r in self.logs],
            "data": list(self.data),
        }

    @cached_property
    def report_id(self) -> str:
        """Derived from everything else in the report."""
        return content_uuid("report", canonical_json(self._body()))

    def as_dict(self) -> dict[str, Any]:
        """report.json's content."""
        body = self._body()
        return {"schema": body["schema"], "id": self.report_id, **body}
