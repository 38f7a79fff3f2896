"""Host hardening evidence on the session's deployed lab, with real `oscap` (issue 32's acceptance).

Every lab host is scanned once for the module (in parallel, as `aifactory up`'s scan stage and
`aifactory audit scan` do: playbooks/scan.yml through the lab's Connection) against the lab site's
profile (`anssi_bp28_intermediary`, the default), after the base role has hardened it. The numbers
are printed; the lab's reviewed waivers (inventory/lab/site.scap-waivers.yaml) must explain every
failing rule and hold no stale or expired waiver; the signed report and its OSCAL results show the
scan per host with failures under their controls.

The module uses the session's deployed lab (`deployed_lab`, tests/conftest.py): it runs after the
deploy tests, and its scan writes only the result files under /var/lib/aifactory/scap on each host.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

from aifactory.audit import ReportOptions, produce_report, scap
from aifactory.audit.controls import oscal_control_id
from aifactory.deploy.scan import ScanRun, scan_site
from aifactory.lab.connection import SCAN_SKIP_RULES
from aifactory.pipeline.connection import site_connection

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("oscap") is None or not Path(scap.DATASTREAM).is_file(),
        reason="needs openscap-scanner and ssg-debian 0.1.76 (scripts/setup.sh installs both)",
    ),
]

REPO = Path(__file__).resolve().parents[2]
LAB_WAIVERS = REPO / "inventory" / "lab" / "site.scap-waivers.yaml"
MIN_APPLICABLE = 100
MIN_PASS_RATIO = 0.90


@pytest.fixture(scope="module")
def lab_scan(deployed_lab) -> ScanRun:  # noqa: ANN001 - the session's deployed lab
    """One scan of every host of the session's deployed lab, over the lab's Connection as `aifactory
    up` and the CLI reach it."""
    return scan_site(deployed_lab.lab.site, connection=site_connection(deployed_lab.lab.site))


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _counts(scan: scap.HostScan) -> tuple[int, int, list[str]]:
    """(applicable, passed, failing rules): a waived rule is a failing one."""
    applicable = scan.applicable()
    failing = sorted(r.rule for r in applicable if not r.passed)
    return len(applicable), len(applicable) - len(failing), failing


def test_every_host_is_scanned_with_at_least_100_applicable_rules(deployed_lab, lab_scan) -> None:  # noqa: ANN001
    lab = deployed_lab.lab
    assert sorted(s.host for s in lab_scan.scans) == sorted(lab.hosts)
    assert lab_scan.skipped_rules == tuple(sorted(SCAN_SKIP_RULES))
    for scan in sorted(lab_scan.scans, key=lambda s: s.host):
        applicable, passed, failing = _counts(scan)
        print(
            f"{scan.host}: profile {scan.profile}, {applicable} applicable rules, {passed} pass "
            f"({100 * passed / applicable:.1f}%), {len(failing)} fail: {', '.join(failing)}"
        )
        assert scan.profile == "anssi_bp28_intermediary"
        assert not {r.rule for r in scan.rules if r.result != "notselected"} & set(SCAN_SKIP_RULES)
        assert applicable >= MIN_APPLICABLE, scan.host


def test_at_least_90_percent_of_applicable_rules_pass_on_every_host(lab_scan) -> None:  # noqa: ANN001
    for scan in lab_scan.scans:
        applicable, passed, failing = _counts(scan)
        assert passed >= MIN_PASS_RATIO * applicable, (scan.host, failing)


def test_every_failing_rule_has_a_current_waiver(lab_scan) -> None:  # noqa: ANN001
    waivers = scap.load_waivers(LAB_WAIVERS)
    assessed = scap.assess(lab_scan.scans, waivers, today=_today())
    unwaived = {h.host: h.unwaived for h in assessed.hosts if h.unwaived}
    assert unwaived == {}, f"failing without a waiver: {unwaived}"
    assert [w.rule for w in assessed.stale] == [], "waivers for rules that pass on every host"
    assert [w.rule for w in assessed.expired] == []
    assert assessed.ok


def test_a_waiver_for_a_passing_rule_or_an_expired_one_fails_the_lab_scan(lab_scan, tmp_path: Path) -> None:  # noqa: ANN001
    waivers = scap.load_waivers(LAB_WAIVERS)
    passing = sorted({r.rule for s in lab_scan.scans for r in s.applicable() if r.passed})
    stale = scap.Waiver(passing[0], "a waiver nobody needs any more", "ciso@lab.example", _today(), 0)
    assessed = scap.assess(lab_scan.scans, [*waivers, stale], today=_today())
    assert [w.rule for w in assessed.stale] == [passing[0]] and not assessed.ok

    first = waivers[0]
    lapsed = scap.Waiver(first.rule, first.reason, first.approved_by, _today() - dt.timedelta(days=1), 0)
    assessed = scap.assess(lab_scan.scans, [lapsed, *waivers[1:]], today=_today())
    assert [w.rule for w in assessed.expired] == [first.rule] and not assessed.ok
    assert any(first.rule in h.unwaived for h in assessed.hosts)


def test_the_signed_report_and_oscal_show_the_lab_scan_per_host(
    deployed_lab, lab_scan, tmp_path: Path
) -> None:  # noqa: ANN001
    lab = deployed_lab.lab
    folder = tmp_path / "report"
    produce_report(lab.planned, folder, ReportOptions(scap_waivers=LAB_WAIVERS))
    report = json.loads((folder / "report.json").read_text())
    (section,) = [e for e in report["evidence"] if e["name"] == "host-scan"]
    assert section["status"] == "pass", section["summary"]
    rows = {row["host"]: row for row in section["detail"]["hosts"]}
    assert sorted(rows) == sorted(lab.hosts)
    assert all(row["applicable"] >= MIN_APPLICABLE for row in rows.values())
    assert section["detail"]["run"] == lab_scan.run_id
    assert section["detail"]["skipped_rules"] == sorted(SCAN_SKIP_RULES)
    # Each failing rule on each host is a waived finding about that host, under the content's controls.
    failing = {(s.host, r.rule) for s in lab_scan.scans for r in s.applicable() if not r.passed}
    findings = [f for f in report["findings"] if f["source"] == "host-scan"]
    assert {
        (f["resource"].removeprefix("host/"), f["rule"].removeprefix("scap.")) for f in findings
    } == failing
    assert {f["status"] for f in findings} <= {"waived"}
    # Each finding carries the SP 800-53 controls the content's references name for its rule.
    controls = {(s.host, r.rule): set(r.controls) for s in lab_scan.scans for r in s.applicable()}
    for f in findings:
        assert (
            set(f["controls"])
            == controls[(f["resource"].removeprefix("host/"), f["rule"].removeprefix("scap."))]
        )
    assert sum(1 for f in findings if f["controls"]) >= len(findings) // 2, "most failures map to controls"
    results = json.loads((folder / "assessment-results.json").read_text())
    (result,) = results["assessment-results"]["results"]
    observed = {
        (_prop(o, "rule"), s["title"])
        for o in result["observations"]
        if _prop(o, "source") == "host-scan"
        for s in o["subjects"]
    }
    assert observed == {(f"scap.{rule}", f"host/{host}") for host, rule in failing}
    # In OSCAL each control's finding relates the host-scan observations of the failures under it.
    observation_of = {
        (_prop(o, "rule"), o["subjects"][0]["title"]): o["uuid"]
        for o in result["observations"]
        if _prop(o, "source") == "host-scan"
    }
    related = {
        f["target"]["target-id"]: {r["observation-uuid"] for r in f.get("related-observations", [])}
        for f in result["findings"]
    }
    checked = 0
    for f in findings:
        uuid = observation_of[(f["rule"], f["resource"])]
        for control in f["controls"]:
            target = f"{oscal_control_id(control)}_obj"
            if target in related:  # a control the report reviewed
                assert uuid in related[target], (f["rule"], f["resource"], control)
                checked += 1
    assert checked, "no failure is under a control the report reviewed"


def _prop(item: dict, name: str) -> str | None:  # type: ignore[type-arg]
    return next((p["value"] for p in item.get("props") or [] if p["name"] == name), None)
