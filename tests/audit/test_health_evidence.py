"""Continuous monitoring (CA-7) from the health gate's runs (issue 23): real runs signed by the health
evidence writer into a state folder of their own; the verdicts and Slurm actions are set on the runs
as the gate records them (the checks themselves run on the lab, tests/health/test_health_lab.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from auditfixtures import LAB, TIMESTAMP

from aifactory.audit import ReportOptions, produce_report
from aifactory.audit.evidence.health import NOT_WORKING_SICK, VERIFIED, health_evidence
from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, Evidence
from aifactory.health.evidence import write_evidence
from aifactory.health.run import HealthRun, HostResult
from aifactory.health.tasks import HostPlan
from aifactory.plan import plan_site
from aifactory.plan.model import SitePlan
from aifactory.runtime.health.model import HostTask
from aifactory.state import SiteState


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[SitePlan, SiteState]:
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(tmp_path / "state"))
    plan = plan_site(LAB, write_lock=False).plan
    return plan, SiteState.for_site(plan.name)


def _record(
    plan: SitePlan,
    state: SiteState,
    when: str,
    failing: dict[str, list[str]],
    slurm: list[dict[str, Any]],
    incident: dict[str, Any] | None = None,
) -> Path:
    """One signed run at `when` (HH:MM:SS on 2026-12-02): the hosts in `failing` drain for those reasons."""
    run = HealthRun(plan.name, "quick", f"2026-12-02T{when}.000000Z", f"2026-12-02T{when}.500000Z")
    for host in plan.hosts:
        result = HostResult(HostPlan(host, HostTask(host.name, "quick"), {}, ("disk-free",)), reachable=True)
        result.verdict, result.reasons = (
            ("drain", failing[host.name]) if host.name in failing else ("admit", [])
        )
        run.hosts.append(result)
    run.slurm, run.incident = slurm, incident
    return write_evidence(run, state).report


def _rules(evidence: Evidence) -> dict[str, str]:
    return {result.id: result.status for _, result in evidence.rules}


def test_no_health_run_is_not_assessed(site: tuple[SitePlan, SiteState]) -> None:
    _, state = site
    evidence = health_evidence(state)
    assert evidence.status == NOT_ASSESSED and _rules(evidence) == {VERIFIED: NOT_ASSESSED}
    assert not evidence.findings


def test_runs_with_a_drain_and_its_resume_pass_and_list_the_hosts(site: tuple[SitePlan, SiteState]) -> None:
    plan, state = site
    reason = "aifactory-health: disk-free"
    _record(
        plan,
        state,
        "01:00:00",
        {"lab-cpu-002": ["disk-free"]},
        [
            {"host": "lab-cpu-001", "action": "none", "why": "in service", "admitted": True},
            {"host": "lab-cpu-002", "action": "drain", "reason": reason},
        ],
    )
    _record(
        plan,
        state,
        "01:10:00",
        {},
        [
            {"host": "lab-cpu-001", "action": "none", "why": "in service", "admitted": True},
            {"host": "lab-cpu-002", "action": "resume", "was": reason, "admitted": True},
        ],
    )
    evidence = health_evidence(state)
    assert evidence.status == PASS, evidence.summary
    assert _rules(evidence) == {VERIFIED: PASS, NOT_WORKING_SICK: PASS}
    hosts = {h["host"]: h for h in evidence.detail["hosts"]}
    assert sorted(hosts) == sorted(h.name for h in plan.hosts)
    assert hosts["lab-cpu-002"]["checked"] == "2026-12-02T01:10:00.500000Z"
    assert hosts["lab-cpu-002"]["verdict"] == "admit"
    (drain,) = evidence.detail["drains"]
    assert drain == {
        "host": "lab-cpu-002",
        "reason": reason,
        "drained": "2026-12-02T01:00:00.500000Z",
        "resumed": "2026-12-02T01:10:00.500000Z",
        "seconds": 600.0,
    }


def test_a_failing_host_not_drained_fails_ca7_naming_it(site: tuple[SitePlan, SiteState]) -> None:
    """Over the drain budget: lab-cpu-001 held drained, lab-cpu-002 left in service while failing."""
    plan, state = site
    storage = ["storage-mounted-rw"]
    incident = {"kind": "drain-budget-exceeded", "cause": storage, "spared": ["lab-cpu-002"], "message": "m"}
    _record(
        plan,
        state,
        "02:00:00",
        {"lab-cpu-001": storage, "lab-cpu-002": storage},
        [
            {"host": "lab-cpu-001", "action": "drain", "reason": "aifactory-health: storage-mounted-rw"},
            {"host": "lab-cpu-002", "action": "none", "why": "over the drain budget", "over_budget": True},
        ],
        incident,
    )
    evidence = health_evidence(state)
    assert evidence.status == FAIL and _rules(evidence)[NOT_WORKING_SICK] == FAIL
    (finding,) = evidence.findings
    assert finding.controls == ("CA-7",) and finding.resource == "host/lab-cpu-002"
    assert "lab-cpu-002" in finding.message and "storage-mounted-rw" in finding.message
    assert evidence.detail["incidents"][0]["cause"] == storage
    assert evidence.detail["drains"][0]["resumed"] is None  # lab-cpu-001 is still drained


def test_an_altered_run_fails_ca7(site: tuple[SitePlan, SiteState]) -> None:
    plan, state = site
    report = _record(
        plan,
        state,
        "03:00:00",
        {"lab-cpu-001": ["disk-free"]},
        [
            {"host": "lab-cpu-001", "action": "drain", "reason": "aifactory-health: disk-free"},
        ],
    )
    report.write_text(report.read_text().replace('"verdict": "drain"', '"verdict": "admit"'))
    evidence = health_evidence(state)
    assert _rules(evidence)[VERIFIED] == FAIL
    assert any(f.rule == VERIFIED and str(report) == f.resource for f in evidence.findings)


def test_the_audit_report_shows_ca7_and_a_drained_host(
    site: tuple[SitePlan, SiteState], tmp_path: Path
) -> None:
    plan, state = site
    _record(
        plan,
        state,
        "04:00:00",
        {"lab-cpu-002": ["tcp-bandwidth"]},
        [
            {"host": "lab-cpu-001", "action": "none", "why": "in service", "admitted": True},
            {"host": "lab-cpu-002", "action": "drain", "reason": "aifactory-health: tcp-bandwidth"},
        ],
    )
    produce_report(plan_site(LAB, write_lock=False), tmp_path / "report", ReportOptions(timestamp=TIMESTAMP))
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    controls = {c["id"]: c["status"] for c in data["controls"]}
    assert controls["CA-7"] == PASS
    (section,) = [e for e in data["evidence"] if e["name"] == "health"]
    assert section["detail"]["drains"][0]["host"] == "lab-cpu-002"
    assert section["detail"]["drains"][0]["resumed"] is None
    assert "lab-cpu-002" in (tmp_path / "report" / "report.html").read_text()
