"""The report's dataset-versions evidence (issue 29): every version, file and lineage record of each
dataset checked against the site's key (SI-7), and every erasure listed with when, by whom and on whose
authority, the subject only as a digest (AU-10); a history that does not verify is a finding. Built with
the real library (real signatures, the real runtime policy deciding each version)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from auditfixtures import ROOT, TIMESTAMP

from aifactory.audit import ReportOptions, produce_report
from aifactory.audit.evidence.datasets import dataset_evidence
from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS
from aifactory.data.feedback import FeedbackRequest, Receipt, store_feedback
from aifactory.data.versions import DatasetStore, create_version, erase_subject, subject_digest
from aifactory.plan import plan_site
from aifactory.policy import RuntimeAuthorizer
from aifactory.trust.issuing.models import ModelKey, ensure_model_key

SPEC = ROOT / "tests" / "runtime" / "fixtures" / "site.yaml"  # a site with dataset vitals (NG, confidential)
SCHEMA = json.loads((ROOT / "docs" / "report.schema.json").read_text())


def _erased_history(folder: Path, key: ModelKey) -> dict:
    """vitals with two versions of feedback, then one subject erased: the erasure record."""
    plan = plan_site(SPEC, write_lock=False).plan
    authorizer = RuntimeAuthorizer(plan)
    (folder / "manifest.json").parent.mkdir(parents=True)
    (folder / "manifest.json").write_text('{"format": "aifactory.dataset/v1"}\n')
    for n, subject in enumerate(("patient-x", "patient-y"), start=1):
        store_feedback(
            folder,
            receipt=Receipt(f"{n}" * 32, "health", "vitals-mlp", None, "h", "2026-12-01T00:00:00Z"),
            dataset="vitals",
            request=FeedbackRequest("vitals", subject, {"said": f"outcome-{subject}"}),
            feedback_decision="f" * 32,
            host="h",
            country="NG",
        )
        create_version(plan=plan, dataset="vitals", dataset_dir=folder, key=key, authorizer=authorizer)
    return erase_subject(
        plan=plan,
        dataset="vitals",
        dataset_dir=folder,
        key=key,
        authorizer=authorizer,
        subject="patient-x",
        authority="supervisory authority decision 2026/88",
    )


def test_versions_and_erasures_verify_and_the_erasure_is_listed_without_the_subject(tmp_path: Path) -> None:
    key = ensure_model_key(tmp_path / "runtime")
    record = _erased_history(tmp_path / "vitals", key)
    section = dataset_evidence((("vitals", tmp_path / "vitals"),), key.trust.public_key)
    assert section.status == PASS and not section.findings
    assert [(control, rule.status) for control, rule in section.rules] == [("SI-7", PASS), ("AU-10", PASS)]
    (dataset,) = section.detail["datasets"]
    assert [v["version"] for v in dataset["versions"]] == [1, 2, 3]
    (erasure,) = dataset["erasures"]
    assert erasure["authority"] == "supervisory authority decision 2026/88"
    assert erasure["subject"] == subject_digest("vitals", "patient-x") == record["subject"]
    assert (erasure["records_erased"], erasure["new_version"]["version"]) == (1, 3)
    text = json.dumps(section.detail)
    assert "patient-x" not in text and "outcome-patient" not in text


def test_a_changed_version_is_an_si7_finding(tmp_path: Path) -> None:
    key = ensure_model_key(tmp_path / "runtime")
    _erased_history(tmp_path / "vitals", key)
    lineage = DatasetStore(tmp_path / "vitals").lineage
    lineage.write_bytes(lineage.read_bytes().replace(b"2026/88", b"2026/89"))
    section = dataset_evidence((("vitals", tmp_path / "vitals"),), key.trust.public_key)
    assert section.status == FAIL
    assert {(f.rule, f.controls) for f in section.findings} == {("datasets.versions-verify", ("SI-7",))}


def test_no_dataset_given_is_not_assessed() -> None:
    assert dataset_evidence((), None).status == NOT_ASSESSED


def test_the_erasure_record_is_in_the_signed_audit_report(tmp_path: Path) -> None:
    key = ensure_model_key(tmp_path / "runtime")
    _erased_history(tmp_path / "vitals", key)
    written = produce_report(
        plan_site(SPEC, write_lock=False),
        tmp_path / "report",
        ReportOptions(
            timestamp=TIMESTAMP, datasets=(("vitals", tmp_path / "vitals"),), model_trust=key.trust.public_key
        ),
    )
    report = json.loads((written.folder / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    (section,) = [e for e in report["evidence"] if e["name"] == "datasets"]
    assert section["status"] == "pass"
    (erasure,) = section["detail"]["datasets"][0]["erasures"]
    assert erasure["authority"] == "supervisory authority decision 2026/88"
    html = (written.folder / "report.html").read_text()
    assert "supervisory authority decision 2026/88" in html and "patient-x" not in html
