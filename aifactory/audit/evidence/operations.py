"""Evidence of monitoring and its review, from the operator log: the monitoring deploys (SI-4) and the
latest signed operations report (`aifactory report ops`, AU-6), whose folder must still verify against
the site's audit key and still be the one the log recorded.

With no monitoring deploy on record, SI-4 is not assessed, and with no operations report AU-6 is not
assessed (nothing to check yet, never a pass); a last monitoring deploy that failed fails SI-4, and an
operations report that is gone, no longer verifies or is not the one recorded fails AU-6.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, Evidence, Finding, RuleResult
from aifactory.audit.sign import ALLOWED_SIGNERS, MANIFEST, file_digest
from aifactory.audit.verify import verify_report
from aifactory.chain import iter_records
from aifactory.plan.model import SitePlan
from aifactory.state import SiteState

SOURCE = "operations"
MONITORED = "operations.monitoring-deployed"
REVIEWED = "operations.ops-report-signed"
MONITORING = "SI-4"  # system monitoring
REVIEW = "AU-6"  # audit record review, analysis and reporting


def operations_evidence(state: SiteState, plan: SitePlan) -> Evidence:
    records = operator_records(state)
    deploys = [r for r in records if r.get("command") == "deploy monitoring"]
    reports = [r for r in records if r.get("command") == "report ops"]
    findings: list[Finding] = []
    monitored, monitoring_note = _monitoring_status(plan, deploys)
    if monitored == FAIL:
        findings.append(_finding(MONITORED, MONITORING, f"site/{plan.name}/monitoring", monitoring_note))
    latest = reports[-1] if reports else None
    reviewed, review_note = _report_status(state, latest)
    if reviewed == FAIL and latest is not None:
        folder = str((latest.get("detail") or {}).get("folder", "?"))
        findings.append(_finding(REVIEWED, REVIEW, folder, review_note))
    rules = (
        (MONITORING, RuleResult(MONITORED, "monitoring is deployed on the site's hosts", monitored, SOURCE)),
        (
            REVIEW,
            RuleResult(REVIEWED, "the latest operations report is signed and unchanged", reviewed, SOURCE),
        ),
    )
    statuses = {monitored, reviewed}
    status = FAIL if FAIL in statuses else (PASS if PASS in statuses else NOT_ASSESSED)
    detail: dict[str, Any] = {
        "monitoring_deploys": [_brief(r) for r in deploys[-5:]],
        "monitoring": monitoring_note,
        "ops_report": _brief(latest) if latest else None,
        "ops_report_check": review_note,
    }
    summary = f"{monitoring_note}; {review_note}"
    return Evidence(SOURCE, "Monitoring and its review", status, summary, detail, rules, tuple(findings))


def operator_records(state: SiteState) -> list[dict[str, Any]]:
    """The operator log's records, oldest first (its chain is checked by the operator-log section)."""
    path = state.operator_log
    if not path.exists():
        return []
    return [record for _, record, _ in iter_records(path) if isinstance(record, dict)]


def _monitoring_status(plan: SitePlan, deploys: list[dict[str, Any]]) -> tuple[str, str]:
    if plan.control_host is None and plan.monitoring is None:
        return NOT_ASSESSED, "the plan has no host to run Prometheus on"
    if not deploys:
        return NOT_ASSESSED, "monitoring was never deployed (aifactory monitoring deploy, or aifactory up)"
    last = deploys[-1]
    if last.get("result") != "ok":
        failed = ", ".join((last.get("detail") or {}).get("failed_hosts") or []) or "some hosts"
        return FAIL, f"the last monitoring deploy ({last.get('time')}) failed on {failed}"
    return PASS, f"monitoring deployed {len(deploys)} time(s), last at {last.get('time')}"


def _report_status(state: SiteState, latest: dict[str, Any] | None) -> tuple[str, str]:
    if latest is None:
        return NOT_ASSESSED, "no operations report was made (aifactory report ops)"
    detail = latest.get("detail") or {}
    folder = Path(str(detail.get("folder", "")))
    if not (folder / MANIFEST).is_file():
        return FAIL, f"the operations report of {latest.get('time')} is no longer at {folder}"
    trust = state.subdir("audit") / ALLOWED_SIGNERS
    checked = verify_report(folder, trust=trust if trust.is_file() else None)
    if not checked.ok:
        return FAIL, f"the operations report at {folder} does not verify: {'; '.join(checked.problems)}"
    if file_digest(folder / MANIFEST) != detail.get("manifest_sha256"):
        return FAIL, f"the operations report at {folder} is not the one the operator log recorded"
    return PASS, f"operations report at {folder} ({latest.get('time')}) verifies with the site's audit key"


def _brief(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "time": record.get("time"),
        "user": record.get("user"),
        "result": record.get("result"),
        "detail": record.get("detail") or {},
    }


def _finding(rule: str, control: str, resource: str, message: str) -> Finding:
    return Finding(
        rule=rule,
        title="monitoring is not deployed" if rule == MONITORED else "the operations report does not verify",
        controls=(control,),
        severity="moderate",
        resource=resource,
        message=message,
        remediation="aifactory monitoring deploy SITE"
        if rule == MONITORED
        else "aifactory report ops SITE -o DIR",
        status=FAIL,
        source=SOURCE,
    )
