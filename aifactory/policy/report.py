"""Findings, control results and the policy report, as auditors read them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from aifactory.policy.metadata import Annotation, PolicySet
from aifactory.policy.waivers import Waiver

SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}


@dataclass(frozen=True)
class Finding:
    rule: str  # "locality.datacenter_outside_jurisdiction"
    package: str
    title: str
    controls: list[str]
    severity: str
    resource: str  # "datacenter/dc1"
    msg: str
    remediation: str
    status: str  # "fail" | "waived" (a waiver problem: "expired-waiver" | "unmatched-waiver")
    waiver: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "package": self.package,
            "title": self.title,
            "controls": list(self.controls),
            "severity": self.severity,
            "resource": self.resource,
            "msg": self.msg,
            "remediation": self.remediation,
            "status": self.status,
            "waiver": self.waiver,
        }

    def sort_key(self) -> tuple[Any, ...]:
        return (SEVERITY_ORDER.get(self.severity, 9), self.rule, self.resource, self.msg)


@dataclass(frozen=True)
class ControlResult:
    id: str  # "AC-3"
    family: str  # "AC"
    status: str  # "pass" | "fail" | "waived"
    rules: list[dict[str, str]]  # [{"id": ..., "title": ...}]
    findings: dict[str, int]  # {"fail": n, "waived": n}

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "family": self.family,
            "status": self.status,
            "rules": self.rules,
            "findings": dict(self.findings),
        }


@dataclass(frozen=True)
class PolicyReport:
    site: str
    jurisdiction: str
    engine: str
    today: dt.date
    findings: list[Finding]
    controls: list[ControlResult]
    waiver_problems: list[Finding]
    policy_digest: str = ""
    spec_digest: str = ""  # the spec's meaning (SitePlan.spec_digest): which site was checked
    rules_evaluated: int = 0

    @property
    def denied(self) -> bool:
        """Any failure without a valid waiver."""
        return any(f.status == "fail" for f in self.findings)

    def counts(self) -> dict[str, int]:
        return {
            "fail": sum(f.status == "fail" for f in self.findings),
            "waived": sum(f.status == "waived" for f in self.findings),
            "waiver_problems": len(self.waiver_problems),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "jurisdiction": self.jurisdiction,
            "engine": self.engine,
            "today": self.today.isoformat(),
            "decision": "deny" if self.denied else "allow",
            "denied": self.denied,
            "counts": self.counts(),
            "policy_digest": self.policy_digest,
            "spec_digest": self.spec_digest,
            "rules_evaluated": self.rules_evaluated,
            "controls": [c.as_dict() for c in self.controls],
            "findings": [f.as_dict() for f in self.findings],
            "waiver_problems": [f.as_dict() for f in self.waiver_problems],
        }


def finding(
    annotation: Annotation, resource: str, msg: str, status: str, waiver: Waiver | None = None
) -> Finding:
    return Finding(
        annotation.id,
        annotation.package,
        annotation.title,
        list(annotation.controls),
        annotation.severity,
        resource,
        msg,
        annotation.remediation,
        status,
        _waiver_dict(waiver) if waiver else None,
    )


def _waiver_dict(waiver: Waiver) -> dict[str, Any]:
    return {
        "reason": waiver.reason,
        "approved_by": waiver.approved_by,
        "expires": waiver.expires.isoformat(),
        "file": waiver.file,
        "line": waiver.line,
    }


def apply_waivers(
    raw: list[tuple[Annotation, str, str]], waivers: list[Waiver], policies: PolicySet, today: dt.date
) -> tuple[list[Finding], list[Finding]]:
    """(findings, waiver problems). A live waiver matching (rule, resource) makes a finding waived."""
    live = {(w.rule, w.resource): w for w in waivers if not w.expired(today)}
    used: set[tuple[str, str]] = set()
    findings = []
    for annotation, resource, msg in raw:
        waiver = live.get((annotation.id, resource))
        if waiver is not None:
            used.add((annotation.id, resource))
            findings.append(finding(annotation, resource, msg, "waived", waiver))
        else:
            findings.append(finding(annotation, resource, msg, "fail"))
    problems = []
    for waiver in waivers:
        annotation = policies.rule(waiver.rule)
        if waiver.expired(today):
            problems.append(
                finding(
                    annotation,
                    waiver.resource,
                    f"waiver for {waiver.rule} on {waiver.resource} expired on "
                    f"{waiver.expires.isoformat()}; it waives nothing",
                    "expired-waiver",
                    waiver,
                )
            )
        elif (waiver.rule, waiver.resource) not in used:
            problems.append(
                finding(
                    annotation,
                    waiver.resource,
                    f"waiver for {waiver.rule} on {waiver.resource} matches no finding; remove it",
                    "unmatched-waiver",
                    waiver,
                )
            )
    return sorted(findings, key=Finding.sort_key), sorted(problems, key=Finding.sort_key)


def control_results(policies: PolicySet, findings: list[Finding], packages: list[str]) -> list[ControlResult]:
    """One row per control named by an evaluated rule: fail if any finding fails, waived if all waived."""
    rules_by_control: dict[str, list[Annotation]] = {}
    for annotation in policies.rules.values():
        if annotation.package in packages:
            for control in annotation.controls:
                rules_by_control.setdefault(control, []).append(annotation)
    results = []
    for control in sorted(rules_by_control, key=_control_sort_key):
        rule_ids = {a.id for a in rules_by_control[control]}
        mine = [f for f in findings if f.rule in rule_ids]
        counts = {
            "fail": sum(f.status == "fail" for f in mine),
            "waived": sum(f.status == "waived" for f in mine),
        }
        status = "fail" if counts["fail"] else "waived" if counts["waived"] else "pass"
        rules = [
            {"id": a.id, "title": a.title} for a in sorted(rules_by_control[control], key=lambda a: a.id)
        ]
        results.append(ControlResult(control, control.split("-")[0], status, rules, counts))
    return results


def _control_sort_key(control: str) -> tuple[str, int, int]:
    family, _, rest = control.partition("-")
    number, _, enhancement = rest.partition("(")
    return family, int(number), int(enhancement.rstrip(")") or 0)
