"""The report's monitoring evidence (issue 25): SI-4 from the operator log's monitoring deploys, AU-6
from the latest signed operations report (`aifactory report ops`), which must still verify against
the site's audit key and still be the folder the log recorded. Built with the real library: the
operations report written and signed by `publish_report`, records appended to the real hash-chained
operator log, checked by `audit verify`'s own code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from auditfixtures import LAB, TIMESTAMP

from aifactory.audit import ReportOptions, produce_report
from aifactory.audit.evidence.operations import MONITORED, REVIEWED, operations_evidence
from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, Evidence
from aifactory.audit.sign import site_audit_key
from aifactory.plan import plan_site
from aifactory.plan.model import SitePlan
from aifactory.state import SiteState
from aifactory.telemetry.ops_report import Window, publish_report, write_report
from aifactory.telemetry.svg import Plot, Series


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[SitePlan, SiteState]:
    """The lab's plan with a state folder of its own (an empty operator log)."""
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(tmp_path / "state"))
    plan = plan_site(LAB, write_lock=False).plan
    return plan, SiteState.for_site(plan.name)


def _rules(evidence: Evidence) -> dict[str, str]:
    return {result.id: result.status for _, result in evidence.rules}


def _publish(plan: SitePlan, state: SiteState, folder: Path) -> None:
    window = Window.ending(1_780_000_000, 3600)
    plots = (Plot("decisions", "Decisions per second", "1/s", (Series("m", ((window.start, 1.0),)),)),)
    publish_report(folder, plan=plan, state=state, window=window, plots=plots)


def test_nothing_on_record_is_not_assessed_never_a_pass(site: tuple[SitePlan, SiteState]) -> None:
    plan, state = site
    evidence = operations_evidence(state, plan)
    assert _rules(evidence) == {MONITORED: NOT_ASSESSED, REVIEWED: NOT_ASSESSED}
    assert evidence.status == NOT_ASSESSED and not evidence.findings


def test_a_monitoring_deploy_passes_si4_and_a_failed_one_is_a_finding(
    site: tuple[SitePlan, SiteState],
) -> None:
    plan, state = site
    state.record(command="deploy monitoring", result="ok", detail={"changed": 3, "failed_hosts": []})
    assert _rules(operations_evidence(state, plan))[MONITORED] == PASS
    state.record(command="deploy monitoring", result="hosts-failed", detail={"failed_hosts": ["lab-cpu-002"]})
    evidence = operations_evidence(state, plan)
    assert _rules(evidence)[MONITORED] == FAIL
    (finding,) = evidence.findings
    assert finding.controls == ("SI-4",) and "lab-cpu-002" in finding.message


def test_the_latest_operations_report_verifies_for_au6(
    site: tuple[SitePlan, SiteState], tmp_path: Path
) -> None:
    plan, state = site
    _publish(plan, state, tmp_path / "ops")
    evidence = operations_evidence(state, plan)
    assert _rules(evidence)[REVIEWED] == PASS, evidence.summary
    assert evidence.detail["ops_report"]["detail"]["folder"] == str((tmp_path / "ops").resolve())


@pytest.mark.parametrize("damage", ["edited", "removed", "replaced"])
def test_an_operations_report_changed_or_gone_fails_au6(
    site: tuple[SitePlan, SiteState], tmp_path: Path, damage: str
) -> None:
    plan, state = site
    folder = tmp_path / "ops"
    _publish(plan, state, folder)
    if damage == "edited":
        page = folder / "report.html"
        page.write_text(page.read_text().replace("Decisions per second", "All is well"))
    elif damage == "removed":
        shutil.rmtree(folder)
    else:  # another report, validly signed by the same key, written over the one the log recorded
        window = Window.ending(1_790_000_000, 60)
        write_report(folder, site=plan.name, window=window, plots=(), key=site_audit_key(state))
    evidence = operations_evidence(state, plan)
    assert _rules(evidence)[REVIEWED] == FAIL, evidence.summary
    (finding,) = evidence.findings
    assert finding.controls == ("AU-6",)


def test_the_audit_report_shows_si4_and_au6(site: tuple[SitePlan, SiteState], tmp_path: Path) -> None:
    plan, state = site
    state.record(command="deploy monitoring", result="ok", detail={"changed": 0, "failed_hosts": []})
    _publish(plan, state, tmp_path / "ops")
    written = produce_report(
        plan_site(LAB, write_lock=False), tmp_path / "report", ReportOptions(timestamp=TIMESTAMP)
    )
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    controls = {c["id"]: c["status"] for c in data["controls"]}
    assert controls["SI-4"] == PASS and controls["AU-6"] == PASS
    assert str((tmp_path / "ops").resolve()) in (tmp_path / "report" / "report.html").read_text()
    assert written.report.evidence[-1].name == "operations"
