"""Waivers: a waived finding is reported as waived (never a pass); expired, unmatched ones are reported."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from aifactory.errors import SpecError
from aifactory.plan import plan_site
from aifactory.policy import check_site

from .conftest import REPO, SiteWriter

TODAY = dt.date(2026, 11, 22)


def unencrypted(spec: dict[str, Any]) -> None:
    spec["storage"][0]["encrypted_at_rest"] = False


def waiver(**fields: Any) -> dict[str, Any]:
    return {
        "rule": "encryption.unencrypted_storage",
        "resource": "storage/share",
        "reason": "Disk encryption arrives with the Q1 hardware refresh",
        "approved_by": "ciso@lab.example",
        "expires": "2027-03-31",
        **fields,
    }


def write_waivers(site: Path, *waivers: dict[str, Any]) -> Path:
    path = site.with_name("site.waivers.yaml")
    path.write_text(json.dumps({"waivers": list(waivers)}))  # JSON is YAML
    return path


def test_waived_finding_is_reported_as_waived_with_approver_and_expiry(write_site: SiteWriter) -> None:
    site = write_site(unencrypted)
    write_waivers(site, waiver())  # found beside the spec: <stem>.waivers.yaml
    report = check_site(plan_site(site), today=TODAY)
    (finding,) = report.findings
    assert (finding.rule, finding.resource, finding.status) == (
        "encryption.unencrypted_storage",
        "storage/share",
        "waived",
    )
    assert finding.waiver is not None
    assert (finding.waiver["approved_by"], finding.waiver["expires"]) == ("ciso@lab.example", "2027-03-31")
    assert not report.denied and report.waiver_problems == []
    (control,) = [c for c in report.controls if c.id == "SC-28(1)"]
    assert control.status == "waived" and control.findings == {"fail": 0, "waived": 1}


def test_expired_waiver_waives_nothing_and_is_reported(write_site: SiteWriter) -> None:
    site = write_site(unencrypted)
    write_waivers(site, waiver(expires="2026-11-21"))
    report = check_site(plan_site(site), today=TODAY)
    assert [(f.rule, f.status) for f in report.findings] == [("encryption.unencrypted_storage", "fail")]
    assert report.denied
    assert [(p.status, p.resource) for p in report.waiver_problems] == [("expired-waiver", "storage/share")]
    assert "expired on 2026-11-21" in report.waiver_problems[0].msg


def test_waiver_on_its_last_day_still_applies(write_site: SiteWriter) -> None:
    site = write_site(unencrypted)
    write_waivers(site, waiver(expires=TODAY.isoformat()))
    assert not check_site(plan_site(site), today=TODAY).denied


def test_unmatched_waiver_is_reported_and_does_not_hide_other_findings(write_site: SiteWriter) -> None:
    site = write_site(unencrypted)
    write_waivers(site, waiver(resource="storage/elsewhere"))
    report = check_site(plan_site(site), today=TODAY)
    assert [f.status for f in report.findings] == ["fail"]
    assert [(p.status, p.resource) for p in report.waiver_problems] == [
        ("unmatched-waiver", "storage/elsewhere")
    ]


def test_waiver_for_a_passing_site_is_unmatched(write_site: SiteWriter) -> None:
    site = write_site()
    write_waivers(site, waiver())
    report = check_site(plan_site(site), today=TODAY)
    assert not report.denied and report.findings == []
    assert [p.status for p in report.waiver_problems] == ["unmatched-waiver"]


def test_explicit_waivers_file_overrides_the_default(write_site: SiteWriter, tmp_path: Path) -> None:
    site = write_site(unencrypted)
    other = tmp_path / "other.yaml"
    other.write_text(json.dumps({"waivers": [waiver()]}))
    assert check_site(plan_site(site), today=TODAY).denied
    assert not check_site(plan_site(site), waivers=other, today=TODAY).denied


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"rule": "encryption.no_such_rule"}, "does not exist"),
        ({"approved_by": ""}, "approved_by is required"),
        ({"expires": "soon"}, "expires must be a date"),
        ({"colour": "red"}, "unknown field 'colour'"),
    ],
)
def test_bad_waiver_is_a_clear_error(write_site: SiteWriter, entry: dict[str, Any], message: str) -> None:
    site = write_site(unencrypted)
    path = write_waivers(site, waiver(**entry))
    with pytest.raises(SpecError) as caught:
        check_site(plan_site(site), today=TODAY)
    problem = caught.value.problems[0]
    assert message in problem.message
    assert problem.location.file == str(path) and problem.location.path == "waivers[0]"


def test_cli_shows_waived_findings_and_exits_0(write_site: SiteWriter) -> None:
    site = write_site(unencrypted)
    write_waivers(site, waiver(expires="2099-01-01"))
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "aifactory"), "policy", "check", str(site), "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["decision"] == "allow" and report["counts"] == {
        "fail": 0,
        "waived": 1,
        "waiver_problems": 0,
    }
    assert report["findings"][0]["status"] == "waived"
    assert report["findings"][0]["waiver"]["approved_by"] == "ciso@lab.example"
