"""Evidence from the policy check: every control the policies name, each rule's verdict, each
finding with its resource and remediation, and waivers with their approver and expiry."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aifactory.audit.model import FAIL, PASS, WAIVED, Evidence, Finding, RuleResult, Waiver, worst

SOURCE = "policy"


def policy_evidence(policy: Mapping[str, Any]) -> Evidence:
    """Read a PolicyReport's `as_dict()` (read defensively: unknown keys are ignored)."""
    findings = tuple(_finding(raw) for raw in policy.get("findings") or [])
    titles = _rule_titles(policy, findings)
    rules: list[tuple[str, RuleResult]] = []
    for control_id, rule_ids, reported in _controls(policy, findings):
        verdicts = [
            RuleResult(rule, titles.get(rule, ""), _rule_status(rule, control_id, findings), SOURCE)
            for rule in rule_ids
        ]
        if reported and worst([v.status for v in verdicts] or [PASS]) != reported:
            verdicts.append(
                RuleResult("policy.control", "the control's verdict from the policy engine", reported, SOURCE)
            )
        rules += [(control_id, verdict) for verdict in verdicts]
    denied = bool(policy.get("denied"))
    problems = [_finding(raw).as_dict() for raw in policy.get("waiver_problems") or []]
    failed = sum(1 for f in findings if f.status == FAIL)
    waived = sum(1 for f in findings if f.status == WAIVED)
    summary = (
        f"{len(rules)} rule verdicts on {len({c for c, _ in rules})} controls by the "
        f"{policy.get('engine', 'policy')} engine: {failed} failing findings, {waived} waived"
    )
    detail = {
        "engine": policy.get("engine"),
        "jurisdiction": policy.get("jurisdiction"),
        "evaluated_on": _text(policy.get("today")),
        "denied": denied,
        "findings": {"fail": failed, "waived": waived},
        "waiver_problems": problems,
    }
    return Evidence(
        SOURCE, "Policy check", FAIL if denied or failed else PASS, summary, detail, tuple(rules), findings
    )


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _finding(raw: Mapping[str, Any]) -> Finding:
    waiver = raw.get("waiver")
    return Finding(
        rule=_text(raw.get("rule")),
        title=_text(raw.get("title")),
        controls=tuple(_text(c) for c in raw.get("controls") or []),
        severity=_text(raw.get("severity")) or "unknown",
        resource=_text(raw.get("resource")),
        message=_text(raw.get("msg") or raw.get("message")),
        remediation=_text(raw.get("remediation")),
        status=WAIVED if raw.get("status") == WAIVED else FAIL,
        source=SOURCE,
        waiver=Waiver(
            _text(waiver.get("reason")), _text(waiver.get("approved_by")), _text(waiver.get("expires"))
        )
        if isinstance(waiver, Mapping)
        else None,
    )


def _rule_ids(raw_rules: Iterable[Any]) -> list[tuple[str, str]]:
    """Rules as the engine lists them: {id, title} mappings, [id, title] pairs or bare ids."""
    out = []
    for rule in raw_rules:
        if isinstance(rule, Mapping):
            out.append((_text(rule.get("id") or rule.get("rule")), _text(rule.get("title"))))
        elif isinstance(rule, list | tuple) and rule:
            out.append((_text(rule[0]), _text(rule[1]) if len(rule) > 1 else ""))
        else:
            out.append((_text(rule), ""))
    return out


def _rule_titles(policy: Mapping[str, Any], findings: tuple[Finding, ...]) -> dict[str, str]:
    titles = {f.rule: f.title for f in findings if f.title}
    for control in policy.get("controls") or []:
        for rule, title in _rule_ids(control.get("rules") or []):
            if title:
                titles.setdefault(rule, title)
    return titles


def _controls(policy: Mapping[str, Any], findings: tuple[Finding, ...]) -> list[tuple[str, list[str], str]]:
    """(control id, its rule ids, the engine's status) for every control reported or named by a finding."""
    order: dict[str, tuple[list[str], str]] = {}
    for control in policy.get("controls") or []:
        control_id = _text(control.get("id"))
        rules = [rule for rule, _ in _rule_ids(control.get("rules") or [])]
        order[control_id] = (rules, _text(control.get("status")))
    for finding in findings:
        for control_id in finding.controls:
            rules, reported = order.setdefault(control_id, ([], ""))
            if finding.rule not in rules:
                rules.append(finding.rule)
    return [(control_id, rules, reported) for control_id, (rules, reported) in order.items()]


def _rule_status(rule: str, control_id: str, findings: tuple[Finding, ...]) -> str:
    return worst([f.status for f in findings if f.rule == rule and control_id in f.controls] or [PASS])
