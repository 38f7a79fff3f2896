"""`aifactory policy check`: the control table, findings with remediation, exit codes, stable JSON."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from .conftest import REPO, SiteWriter


def policy_check(site: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / ".venv" / "bin" / "aifactory"), "policy", "check", str(site), *extra],
        capture_output=True,
        text=True,
        check=False,
    )


def unencrypted(spec: dict[str, Any]) -> None:
    spec["storage"][0]["encrypted_at_rest"] = False


def test_passing_site_exits_0_with_a_control_table(write_site: SiteWriter) -> None:
    result = policy_check(write_site())
    assert result.returncode == 0, result.stderr
    assert "SC-28(1)  pass" in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("PASS: 0 failed, 0 waived")


def test_denied_site_exits_1_and_names_resource_and_remediation(write_site: SiteWriter) -> None:
    result = policy_check(write_site(unencrypted))
    assert result.returncode == 1, result.stderr
    assert "SC-28(1)  fail    1" in result.stdout
    assert (
        "FAIL     high     SC-28(1)   storage/share: storage share is not encrypted at rest" in result.stdout
    )
    assert "fix: Set encrypted_at_rest to true on the storage" in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("DENY: 1 failed")


def test_json_report_is_the_same_data_and_deterministic(write_site: SiteWriter) -> None:
    site = write_site(unencrypted)
    first, second = policy_check(site, "--format", "json"), policy_check(site, "--format", "json")
    assert first.returncode == second.returncode == 1
    assert first.stdout == second.stdout
    report = json.loads(first.stdout)
    assert report["decision"] == "deny" and report["site"] == "lab" and report["engine"] == "embedded"
    (finding,) = report["findings"]
    assert finding["controls"] == ["SC-28(1)"] and finding["resource"] == "storage/share"
    assert {c["id"]: c["status"] for c in report["controls"]}["SC-28(1)"] == "fail"


def test_opa_engine_without_url_is_a_usage_error(write_site: SiteWriter) -> None:
    result = policy_check(write_site(), "--engine", "opa")
    assert result.returncode == 2 and "--opa-url" in result.stderr
