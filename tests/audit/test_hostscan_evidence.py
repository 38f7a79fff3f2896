"""The host-scan evidence in the signed report: per host and per profile, failures under their
SP 800-53 controls, waivers weighed, the trend against the scan before, and OSCAL per host.

Real parts: one real `oscap` run of a few rules on this machine (read-only), digested as
`aifactory audit scan` digests each host's ARF; the same real digest stands for two lab hosts here
(the lab test scans each host for real). The report is the real `produce_report`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from auditfixtures import TIMESTAMP, failing_spec

from aifactory.audit import ReportOptions, produce_report, scap
from aifactory.audit.controls import oscal_control_id
from aifactory.audit.evidence.hostscan import host_scan_evidence
from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, WAIVED
from aifactory.plan import plan_site
from aifactory.state import SiteState

pytestmark = pytest.mark.skipif(
    shutil.which("oscap") is None or not Path(scap.DATASTREAM).is_file(),
    reason="needs openscap-scanner and ssg-debian 0.1.76 (scripts/setup.sh installs both)",
)
RULES = (
    "file_permissions_etc_shadow",
    "package_telnetd_removed",
    "accounts_password_pam_minlen",
    "sudo_add_env_reset",
)
HOSTS = ("lab-ctl-001", "lab-gpu-001")
TODAY = scap.dt.date(2026, 11, 22)


@pytest.fixture(scope="module")
def real_scan(tmp_path_factory: pytest.TempPathFactory) -> scap.HostScan:
    arf = tmp_path_factory.mktemp("arf") / "arf.xml"
    argv = ["oscap", "xccdf", "eval", "--profile", scap.PROFILE_PREFIX + "anssi_bp28_high"]
    for rule in RULES:
        argv += ["--rule", scap.RULE_PREFIX + rule]
    done = subprocess.run(
        [*argv, "--results-arf", str(arf), scap.DATASTREAM], capture_output=True, check=False
    )
    assert done.returncode in (0, 2), done.stderr
    return scap.digest_arf(arf, host="here")


def _record_run(state: SiteState, run: str, scan: scap.HostScan) -> None:
    folder = state.subdir("scap") / run
    folder.mkdir()
    hosts = [{**scan.as_json(), "host": host} for host in HOSTS]
    (folder / "scan.json").write_text(json.dumps({"site": state.site, "run_id": run, "hosts": hosts}))


def _waivers(path: Path, rules: list[str], expires: str = "2027-06-30") -> Path:
    items = [
        {
            "rule": r,
            "reason": "explained for the test, reviewed",
            "approved_by": "ciso@lab.example",
            "expires": scap.dt.date.fromisoformat(expires),
        }
        for r in rules
    ]
    path.write_text(yaml.safe_dump({"waivers": items}))
    return path


def prop_value(item: dict, name: str) -> str | None:  # type: ignore[type-arg]
    return next((p["value"] for p in item.get("props") or [] if p["name"] == name), None)


def _failing(scan: scap.HostScan) -> list[str]:
    return [r.rule for r in scan.applicable() if not r.passed]


def test_no_scan_is_not_assessed(tmp_path: Path) -> None:
    section = host_scan_evidence(SiteState.for_site("noscan"), waivers=None, today=TODAY)
    assert section.status == NOT_ASSESSED and not section.rules


def test_failures_are_findings_per_host_under_their_controls(
    real_scan: scap.HostScan, tmp_path: Path
) -> None:
    state = SiteState.for_site("scanfail")
    _record_run(state, "20261122T090000.000000Z", real_scan)
    section = host_scan_evidence(state, waivers=None, today=TODAY)
    failing = _failing(real_scan)
    assert section.status == (FAIL if failing else PASS)
    assert sorted({f.resource for f in section.findings}) == (
        sorted(f"host/{h}" for h in HOSTS) if failing else []
    )
    for finding in section.findings:
        rule = next(r for r in real_scan.rules if f"scap.{r.rule}" == finding.rule)
        assert finding.controls == rule.controls and finding.status == FAIL
    rows = {row["host"]: row for row in section.detail["hosts"]}
    assert set(rows) == set(HOSTS)
    assert rows[HOSTS[0]]["applicable"] == len(real_scan.applicable())
    assert section.detail["profiles"][0]["profile"] == "anssi_bp28_high"
    assert section.detail["trend"]["previous_run"] is None


def test_waived_failures_and_stale_waivers(real_scan: scap.HostScan, tmp_path: Path) -> None:
    failing = _failing(real_scan)
    passing = [r.rule for r in real_scan.applicable() if r.passed]
    if not failing or not passing:
        pytest.skip("this machine's results need one failing and one passing rule among RULES")
    state = SiteState.for_site("scanwaived")
    _record_run(state, "20261122T090000.000000Z", real_scan)
    waived = host_scan_evidence(state, waivers=_waivers(tmp_path / "w.yaml", failing), today=TODAY)
    assert waived.status == PASS
    assert {f.status for f in waived.findings} == {WAIVED}
    assert all(f.waiver and f.waiver.approved_by == "ciso@lab.example" for f in waived.findings)
    stale = host_scan_evidence(
        state, waivers=_waivers(tmp_path / "s.yaml", failing + passing[:1]), today=TODAY
    )
    assert stale.status == FAIL and stale.detail["stale_waivers"] == passing[:1]
    expired = host_scan_evidence(
        state, waivers=_waivers(tmp_path / "e.yaml", failing, "2026-01-01"), today=TODAY
    )
    assert expired.status == FAIL and {f.status for f in expired.findings} == {FAIL}


def test_trend_against_the_previous_scan(real_scan: scap.HostScan) -> None:
    state = SiteState.for_site("scantrend")
    _record_run(state, "20261121T090000.000000Z", real_scan)
    _record_run(state, "20261122T090000.000000Z", real_scan)
    trend = host_scan_evidence(state, waivers=None, today=TODAY).detail["trend"]
    assert trend["previous_run"] == "20261121T090000.000000Z"
    assert [row["change"] for row in trend["hosts"]] == [0, 0]


def test_report_and_oscal_show_the_scan_per_host_and_map_failures_to_controls(
    real_scan: scap.HostScan, tmp_path: Path
) -> None:
    failing = _failing(real_scan)
    if not failing:
        pytest.skip("this machine's results need a failing rule among RULES")
    spec = failing_spec(tmp_path / "spec", name="scanreport")
    _record_run(SiteState.for_site("scanreport"), "20261122T090000.000000Z", real_scan)
    written = produce_report(
        plan_site(spec, write_lock=False), tmp_path / "report", ReportOptions(timestamp=TIMESTAMP)
    )
    report = json.loads((written.folder / "report.json").read_text())
    (section,) = [e for e in report["evidence"] if e["name"] == "host-scan"]
    assert [row["host"] for row in section["detail"]["hosts"]] == sorted(HOSTS)
    scan_findings = [f for f in report["findings"] if f["source"] == "host-scan"]
    assert {f["resource"] for f in scan_findings} == {f"host/{h}" for h in HOSTS}
    controls = {c["id"]: c for c in report["controls"]}
    for finding in scan_findings:
        for control in finding["controls"]:
            assert controls[control]["status"] == "fail"
    results = json.loads((written.folder / "assessment-results.json").read_text())
    (result,) = results["assessment-results"]["results"]
    observed = {
        (prop_value(o, "rule"), s["title"])
        for o in result["observations"]
        if prop_value(o, "source") == "host-scan"
        for s in o["subjects"]
    }
    assert observed == {(f"scap.{rule}", f"host/{h}") for rule in failing for h in HOSTS}
    # each failing control's OSCAL finding links the host-scan observations
    by_control = {f["target"]["target-id"]: f for f in result["findings"]}
    first = scan_findings[0]["controls"][0]
    control_finding = by_control[oscal_control_id(first) + "_obj"]
    assert control_finding["target"]["status"]["state"] == "not-satisfied"
    scan_observations = {o["uuid"] for o in result["observations"] if prop_value(o, "source") == "host-scan"}
    assert scan_observations & {r["observation-uuid"] for r in control_finding["related-observations"]}
    html = (written.folder / "report.html").read_text()
    assert "Host scans (OpenSCAP)" in html and "lab-gpu-001" in html
