"""Evidence from each stage, as it exists: deploy records, the operator log and real decision logs.
Missing evidence is "not assessed"; broken evidence fails; report.json matches its published schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from auditfixtures import ROOT, TIMESTAMP, failing_spec

from aifactory.audit import ReportOptions, WrittenReport, produce_report
from aifactory.audit.evidence.deploy import deploy_evidence
from aifactory.audit.evidence.logs import decision_log_evidence
from aifactory.deploy.evidence import write_installed
from aifactory.plan import plan_site
from aifactory.plan.model import SitePlan
from aifactory.state import SiteState
from aifactory.trust.decisionlog import DecisionLog

SCHEMA = json.loads((ROOT / "docs" / "report.schema.json").read_text())
PACKAGES = {"slurm-wlm": "22.05.8-4", "munge": "0.5.15-2", "aifactory": "0.1.0"}
CONFIGS = {"/etc/slurm/slurm.conf": "sha256:" + "1" * 64, "/etc/chrony/chrony.conf": "sha256:" + "2" * 64}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SitePlan, SiteState]:
    spec = failing_spec(tmp_path_factory.mktemp("deployed"), name="labdeploy")
    return spec, plan_site(spec, write_lock=False).plan, SiteState.for_site("labdeploy")


def _write_installed(state: SiteState, hosts: dict[str, dict]) -> None:
    path = state.subdir("deploy") / "installed.json"
    path.write_text(json.dumps({"hosts": hosts}))


def _deploy(state: SiteState, plan: SitePlan, *, plan_digest: str, failed: tuple[str, ...] = ()) -> None:
    """Record a deploy run with deploy's own writer, as `aifactory deploy` does."""
    reports = {
        h.name: {
            "runtime": {
                "version": "0.1.0",
                "packages": [{"name": k, "version": v} for k, v in PACKAGES.items()],
            },
            "config_files": CONFIGS,
            "bundle": {"version": "1.0", "digest": "sha256:" + "3" * 64},
        }
        for h in plan.hosts
        if h.name not in failed
    }
    results = {h.name: "failed" if h.name in failed else "changed" for h in plan.hosts}
    write_installed(
        state, run_id="run-1", when=TIMESTAMP, plan_digest=plan_digest, reports=reports, results=results
    )


def _rules(evidence) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {verdict.id: verdict.status for _control, verdict in evidence.rules}


ALL_PASS = dict.fromkeys(("deploy.inventory_complete", "deploy.pool_baseline", "deploy.current_plan"), "pass")


def test_deploy_not_run_is_not_assessed(tmp_path: Path) -> None:
    spec = failing_spec(tmp_path, name="labnodeploy")
    plan = plan_site(spec, write_lock=False).plan
    evidence = deploy_evidence(SiteState.for_site("labnodeploy"), plan, plan.digest())
    assert evidence.status == "not-assessed"
    assert set(_rules(evidence).values()) == {"not-assessed"}
    assert {control for control, _ in evidence.rules} == {"CM-8", "CM-2"}


def test_deploy_record_written_by_deploy_passes(deployed: tuple[Path, SitePlan, SiteState]) -> None:
    _spec, plan, state = deployed
    _deploy(state, plan, plan_digest=plan.digest())
    evidence = deploy_evidence(state, plan, plan.digest())
    assert _rules(evidence) == ALL_PASS, [f.message for f in evidence.findings]
    assert len(evidence.detail["baselines"]) == 1
    assert evidence.detail["baselines"][0]["packages"] == dict(sorted(PACKAGES.items()))
    assert evidence.detail["baselines"][0]["configs"] == dict(sorted(CONFIGS.items()))


def test_a_failed_host_and_an_old_plan_fail(deployed: tuple[Path, SitePlan, SiteState]) -> None:
    _spec, plan, state = deployed
    (state.path("deploy", "installed.json")).unlink(missing_ok=True)
    _deploy(state, plan, plan_digest="sha256:" + "9" * 64, failed=("labdeploy-cpu-002",))
    evidence = deploy_evidence(state, plan, plan.digest())
    assert _rules(evidence) == {
        "deploy.inventory_complete": "fail",
        "deploy.pool_baseline": "pass",
        "deploy.current_plan": "fail",
    }
    missing = next(f for f in evidence.findings if f.rule == "deploy.inventory_complete")
    assert missing.resource == "pool/cpu" and "tried and failed" in missing.message
    assert evidence.detail["last_run_not_ok"] == ["labdeploy-cpu-002"]


def test_drift_and_missing_hosts_fail_with_findings(deployed: tuple[Path, SitePlan, SiteState]) -> None:
    _spec, plan, state = deployed
    hosts = {
        h.name: {
            "packages": [{"name": k, "version": v} for k, v in PACKAGES.items()],
            "configs": [{"path": k, "sha256": v} for k, v in CONFIGS.items()],
        }
        for h in plan.hosts
        if h.role != "control"
    }  # the control host never reported
    hosts["labdeploy-cpu-002"]["packages"][0]["version"] = "22.05.7-1"  # one host drifted
    hosts["stranger-001"] = {"packages": {}, "configs": {"/etc/motd": "sha256:" + "0" * 64}}
    _write_installed(state, hosts)
    evidence = deploy_evidence(state, plan, plan.digest())
    assert _rules(evidence) == {
        "deploy.inventory_complete": "fail",
        "deploy.pool_baseline": "fail",
        "deploy.current_plan": "pass",
    }
    resources = {(f.rule, f.resource) for f in evidence.findings}
    assert resources == {
        ("deploy.inventory_complete", "pool/control"),
        ("deploy.inventory_complete", "site/labdeploy"),
        ("deploy.pool_baseline", "pool/cpu"),
    }
    drift = next(f for f in evidence.findings if f.rule == "deploy.pool_baseline")
    assert "labdeploy-cpu-002" in drift.message


def test_host_specific_files_differ_by_design_but_a_shared_file_is_drift(
    deployed: tuple[Path, SitePlan, SiteState],
) -> None:
    """Files deploy marks as the host's own (addresses, name) never break a pool's baseline; a pool-wide
    file that differs does."""
    _spec, plan, state = deployed
    own = "/etc/aifactory/runtime.yaml"
    reports = {
        h.name: {
            "runtime": {"version": "0.1.0"},
            "bundle": {"version": "1.0", "digest": "sha256:" + "3" * 64},
            "config_files": {**CONFIGS, own: "sha256:" + h.name.encode().hex()[:64].ljust(64, "0")},
            "host_config_files": [own],
        }
        for h in plan.hosts
    }
    results = dict.fromkeys((h.name for h in plan.hosts), "changed")
    (state.path("deploy", "installed.json")).unlink(missing_ok=True)
    write_installed(
        state, run_id="run-2", when=TIMESTAMP, plan_digest=plan.digest(), reports=reports, results=results
    )
    assert _rules(deploy_evidence(state, plan, plan.digest())) == ALL_PASS
    drifted = "labdeploy-cpu-002"
    reports[drifted]["config_files"] = {
        **reports[drifted]["config_files"],
        "/etc/slurm/slurm.conf": "sha256:" + "4" * 64,
    }
    write_installed(
        state, run_id="run-3", when=TIMESTAMP, plan_digest=plan.digest(), reports=reports, results=results
    )
    evidence = deploy_evidence(state, plan, plan.digest())
    assert _rules(evidence)["deploy.pool_baseline"] == "fail"
    assert drifted in next(f for f in evidence.findings if f.rule == "deploy.pool_baseline").message


def test_an_unreadable_deploy_record_fails(deployed: tuple[Path, SitePlan, SiteState]) -> None:
    _spec, plan, state = deployed
    (state.subdir("deploy") / "installed.json").write_text('{"hosts": [1, 2')
    evidence = deploy_evidence(state, plan, plan.digest())
    assert evidence.status == "fail" and _rules(evidence)["deploy.inventory_complete"] == "fail"


def _decision_log(state: SiteState, records: int) -> Path:
    path = state.subdir("runtime") / "decisions.jsonl"
    log = DecisionLog(path, sign_every=2)
    for index in range(records):
        log.record(
            {
                "tenant": "health",
                "action": "infer",
                "resource": "model/vitals-mlp",
                "allow": True,
                "reasons": [],
                "decision_id": f"d{index}",
            }
        )
    log.close()
    return path


def test_decision_logs_verify_and_a_tampered_one_fails(tmp_path: Path) -> None:
    state = SiteState.for_site("labdecisions")
    path = _decision_log(state, 5)
    evidence = decision_log_evidence(state)
    assert evidence.status == "pass", evidence.detail
    assert _rules(evidence) == {
        "logs.decision_log_chain": "pass",
        "logs.decision_log_recorded": "pass",
        "logs.decision_log_retention": "pass",
    }
    assert [ref.path for ref in evidence.logs] == [str(path.resolve())]
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"allow":true', '"allow":false')
    path.write_text("".join(lines))
    evidence = decision_log_evidence(state)
    assert _rules(evidence)["logs.decision_log_chain"] == "fail"
    assert evidence.findings and evidence.findings[0].controls == ("AU-9",)


def test_full_report_with_every_kind_of_evidence(tmp_path: Path) -> None:
    spec = failing_spec(tmp_path / "spec", name="labfull")
    plan = plan_site(spec, write_lock=False).plan
    state = SiteState.for_site("labfull")
    _deploy(state, plan, plan_digest=plan.digest())
    state.record(command="deploy", result="ok")
    _decision_log(state, 3)
    written = produce_report(
        plan_site(spec, write_lock=False), tmp_path / "report", ReportOptions(timestamp=TIMESTAMP)
    )
    statuses = {c.id: c.status for c in written.report.controls}
    assert {k: statuses[k] for k in ("CM-2", "CM-8", "AU-9", "AU-12")} == dict.fromkeys(
        ("CM-2", "CM-8", "AU-9", "AU-12"), "pass"
    )
    assert statuses["SI-7"] == "not-assessed"  # no bundle imported
    report = json.loads((written.folder / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    assert {log["kind"] for log in report["logs"]} == {"operator-log", "decision-log"}
    html = (written.folder / "report.html").read_text()
    assert "slurm-wlm" in html and "22.05.8-4" in html and CONFIGS["/etc/slurm/slurm.conf"] in html


def test_reports_match_the_published_schema(failing_report: WrittenReport, lab_report: WrittenReport) -> None:
    for written in (failing_report, lab_report):
        jsonschema.validate(json.loads((written.folder / "report.json").read_text()), SCHEMA)
