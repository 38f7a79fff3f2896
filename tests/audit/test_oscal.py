"""The OSCAL files of a report: the assessment results say what the policy check said; the SSP,
assessment plan, results, POA&M and profile validate (compliance-trestle's models, `trestle validate`,
NIST's JSON schemas), import each other inside the folder, and every control id in them resolves
against the shipped NIST catalog."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from auditfixtures import NATIONAL, TIMESTAMP
from oscal_schema import schema_errors
from trestle.oscal.assessment_results import AssessmentResults

from aifactory.audit import ReportOptions, WrittenReport, produce_report
from aifactory.audit.catalog import CATALOG, CONTENT, PROFILE, load_catalog
from aifactory.audit.controls import MODERATE_BASELINE, oscal_control_id
from aifactory.plan import plan_site
from aifactory.policy import check_site


def _plain(value: object) -> str:
    """An OSCAL enum or token as its text (trestle wraps them in enums and root models)."""
    while hasattr(value, "root") or hasattr(value, "value"):
        value = getattr(value, "root", None) or value.value
    return str(value)


def _load(report: WrittenReport) -> AssessmentResults:
    return AssessmentResults.oscal_read(report.folder / "assessment-results.json")


def test_every_failed_policy_control_is_a_not_satisfied_finding(
    failing_site: Path, failing_report: WrittenReport
) -> None:
    today = dt.date.fromisoformat(TIMESTAMP[:10])
    policy = check_site(plan_site(failing_site, write_lock=False), today=today)
    failed = {c.id for c in policy.controls if c.status == "fail"}
    assert len(failed) >= 2, "the fixture must fail several controls"
    result = _load(failing_report).results[0]
    by_target = {f.target.target_id: f for f in result.findings}
    observations = {o.uuid: o for o in result.observations}
    for control in failed:
        finding = by_target[f"{oscal_control_id(control)}_obj"]
        assert finding.target.status.state.value == "not-satisfied"
        cited = {
            p.value
            for u in finding.related_observations
            for p in observations[u.observation_uuid].props or []
            if p.name == "rule"
        }
        failing_rules = {f.rule for f in policy.findings if f.status == "fail" and control in f.controls}
        assert failing_rules <= cited
    reviewed = {c.control_id for c in result.reviewed_controls.control_selections[0].include_controls}
    assert {oscal_control_id(c.id) for c in policy.controls} <= reviewed


def test_waivers_are_risks_with_approver_and_expiry(failing_report: WrittenReport) -> None:
    result = _load(failing_report).results[0]
    assert result.risks, "the fixture waives one finding"
    risk = result.risks[0]
    assert _plain(risk.status) == "deviation-approved"
    props = {p.name: p.value for p in risk.props}
    assert props == {"approved-by": "ciso@lab.example", "expires": "2030-06-30"}
    assert risk.deadline.isoformat().startswith("2030-06-30")
    waived = [f for f in result.findings if f.related_risks]
    assert waived and all(f.target.status.state.value == "not-satisfied" for f in waived)


def test_missing_evidence_is_never_satisfied(lab_report: WrittenReport) -> None:
    """Before deploy there is no deploy record and no decision log: those controls are not assessed."""
    data = json.loads((lab_report.folder / "report.json").read_text())
    not_assessed = {c["id"] for c in data["controls"] if c["status"] == "not-assessed"}
    assert {"CM-2", "CM-8"} <= not_assessed
    result = _load(lab_report).results[0]
    states = {f.target.target_id: f.target.status.state.value for f in result.findings}
    assert all(states[f"{oscal_control_id(c)}_obj"] == "not-satisfied" for c in not_assessed)


def test_national_example_report(tmp_path: Path) -> None:
    if not NATIONAL.exists():
        pytest.skip("the national example is not in this checkout")
    written = produce_report(
        plan_site(NATIONAL, write_lock=False), tmp_path / "report", ReportOptions(timestamp=TIMESTAMP)
    )
    result = _load(written).results[0]
    assert len(result.findings) == len(written.report.controls)
    assert written.report.site["hosts"] > 1000
    assert written.report.site["plan_digest"] == plan_site(NATIONAL, write_lock=False).plan.digest()
    assert (tmp_path / "report" / "report.html").stat().st_size > 0


OSCAL_FILES = {
    "ssp.json": "system-security-plans/site/system-security-plan.json",
    "assessment-plan.json": "assessment-plans/site/assessment-plan.json",
    "assessment-results.json": "assessment-results/site/assessment-results.json",
    "poam.json": "plan-of-action-and-milestones/site/plan-of-action-and-milestones.json",
    "profile.json": "profiles/moderate/profile.json",
}


def _document(report: WrittenReport, name: str) -> dict:
    return json.loads((report.folder / name).read_text())


def _values(node: object, key: str) -> list[object]:
    """Every value of `key` anywhere in a JSON document."""
    found: list[object] = []
    if isinstance(node, dict):
        for k, v in node.items():
            found += [v] if k == key else []
            found += _values(v, key)
    elif isinstance(node, list):
        for item in node:
            found += _values(item, key)
    return found


@pytest.mark.parametrize("name", sorted(OSCAL_FILES))
def test_each_oscal_file_validates_against_nists_schema(failing_report: WrittenReport, name: str) -> None:
    assert schema_errors(_document(failing_report, name)) == []


def test_trestle_validate_accepts_every_oscal_file(failing_report: WrittenReport, tmp_path: Path) -> None:
    """`trestle validate -a` in a trestle workspace, the profile and catalog where the SSP's hrefs
    lead (trestle resolves the SSP's profile and the profile's catalog: no network)."""
    root = tmp_path / "trestle"
    root.mkdir()
    trestle = str(Path(sys.executable).with_name("trestle"))
    done = subprocess.run([trestle, "init"], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name, where in OSCAL_FILES.items():
        (root / where).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(failing_report.folder / name, root / where)
    shutil.copy(failing_report.folder / "profile.json", root / "profile.json")
    shutil.copy(CONTENT / CATALOG, root / CATALOG)
    done = subprocess.run([trestle, "validate", "-a"], cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("VALID: Model") == len(OSCAL_FILES), done.stdout


def test_every_control_id_resolves_against_the_shipped_catalog(failing_report: WrittenReport) -> None:
    catalog = load_catalog()
    raw = json.loads((CONTENT / CATALOG).read_text())
    part_ids = {v for v in _values(raw, "id") if isinstance(v, str)}
    seen = 0
    for name in OSCAL_FILES:
        document = _document(failing_report, name)
        ids = [*_values(document, "control-id"), *(i for ids in _values(document, "with-ids") for i in ids)]
        ids += [p["value"] for p in _values(document, "props") for p in p if p.get("name") == "control"]
        for control_id in ids:
            assert catalog.get(str(control_id)) is not None, f"{name}: {control_id}"
        targets = [t["target-id"] for t in _values(document, "target") if t.get("type") == "objective-id"]
        for target in targets:
            assert target in part_ids, f"{name}: objective {target} is not in the catalog"
        seen += len(ids) + len(targets)
    assert seen > 50


def test_the_files_import_each_other_inside_the_folder(failing_report: WrittenReport) -> None:
    results = _document(failing_report, "assessment-results.json")["assessment-results"]
    plan = _document(failing_report, "assessment-plan.json")["assessment-plan"]
    ssp = _document(failing_report, "ssp.json")["system-security-plan"]
    poam = _document(failing_report, "poam.json")["plan-of-action-and-milestones"]
    assert results["import-ap"]["href"] == "assessment-plan.json"
    assert plan["import-ssp"]["href"] == "ssp.json" == poam["import-ssp"]["href"]
    assert ssp["import-profile"]["href"] == "profile.json"
    assert (failing_report.folder / "profile.json").read_bytes() == (CONTENT / PROFILE).read_bytes()
    assert poam["system-id"] == ssp["system-characteristics"]["system-ids"][0]
    profile = _document(failing_report, "profile.json")["profile"]
    (resource,) = profile["back-matter"]["resources"]
    assert profile["imports"][0]["href"] == f"#{resource['uuid']}"
    first = resource["rlinks"][0]
    assert first["href"] == CATALOG
    assert first["hashes"][0]["value"] == hashlib.sha256((CONTENT / CATALOG).read_bytes()).hexdigest()
    reviewed = {
        c["control-id"] for c in plan["reviewed-controls"]["control-selections"][0]["include-controls"]
    }
    assessed = {
        c["control-id"]
        for c in results["results"][0]["reviewed-controls"]["control-selections"][0]["include-controls"]
    }
    assert assessed <= reviewed


def test_the_ssp_describes_the_site_from_its_spec(failing_report: WrittenReport, failing_site: Path) -> None:
    spec = yaml.safe_load(failing_site.read_text())
    ssp = _document(failing_report, "ssp.json")["system-security-plan"]
    characteristics = ssp["system-characteristics"]
    props = {p["name"]: p["value"] for p in characteristics["props"]}
    assert props["jurisdiction"] == spec["site"]["jurisdiction"]
    assert props["air-gapped"] == "yes"
    assert props["data-residency"] == "NG"
    titles = {c["title"] for c in ssp["system-implementation"]["components"]}
    for pool in spec["node_pools"]:
        assert f"Node pool {pool['name']}" in titles
    for fabric in spec["fabrics"]:
        assert f"Fabric {fabric['name']}" in titles
    for store in spec["storage"]:
        assert f"Storage {store['name']}" in titles
    assert {"Slurm scheduler", "Model serving: vitals-mlp", "Policy: encryption"} <= titles
    users = {u.get("short-name") for u in ssp["system-implementation"]["users"]}
    assert {t["name"] for t in spec["tenants"]} <= users
    requirements = {r["control-id"]: r for r in ssp["control-implementation"]["implemented-requirements"]}
    for control in MODERATE_BASELINE:
        requirement = requirements[oscal_control_id(control)]
        assert requirement["by-components"] and requirement["responsible-roles"], control
    encryption = " ".join(b["description"] for b in requirements["sc-28.1"]["by-components"])
    assert "encryption.unencrypted_storage" in encryption and "encryption.unencrypted_replica" in encryption
    assert characteristics["security-sensitivity-level"] == "moderate"  # confidential data
    # the settings that implement a control, with this site's values (the share is unencrypted here)
    assert "storage[].encrypted_at_rest: share = no" in encryption
    boundary = " ".join(b["description"] for b in requirements["sc-7"]["by-components"])
    assert "site.air_gapped: yes" in boundary and "egress.allow[]: ntp-de" in boundary


def test_the_poam_plans_every_failing_and_waived_rule(failing_report: WrittenReport) -> None:
    poam = _document(failing_report, "poam.json")["plan-of-action-and-milestones"]
    report = failing_report.report
    expected = {f.rule for f in report.findings if f.status in ("fail", "waived")}
    items = {next(p["value"] for p in i["props"] if p["name"] == "rule"): i for i in poam["poam-items"]}
    assert set(items) == expected and len(expected) >= 3
    risks = {r["uuid"]: r for r in poam["risks"]}
    waived = items["egress.endpoint_outside_jurisdiction"]
    risk = risks[waived["related-risks"][0]["risk-uuid"]]
    assert risk["status"] == "deviation-approved" and risk["deadline"].startswith("2030-06-30")
    assert "ciso@lab.example" in waived["remarks"]
    failing = [i for r, i in items.items() if r != "egress.endpoint_outside_jurisdiction"]
    assert all(risks[i["related-risks"][0]["risk-uuid"]]["status"] == "open" for i in failing)


def test_a_clean_site_has_a_poam_saying_so(lab_report: WrittenReport) -> None:
    poam = _document(lab_report, "poam.json")["plan-of-action-and-milestones"]
    assert [i["title"] for i in poam["poam-items"]] == ["No failing or waived control"]
    assert schema_errors({"plan-of-action-and-milestones": poam}) == []
