"""The report's signed-models evidence: the champion each model serves, its signature and promotions
(SI-7, CM-3), from a registry signed with a real key (model-signing, key mode). No torch: a checkpoint
is its files and their SHA-256s."""

from __future__ import annotations

from pathlib import Path

from auditfixtures import checkpoint_files

from aifactory.audit.evidence.models import model_evidence
from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS
from aifactory.trust.issuing.models import ModelKey, ensure_model_key, promote, register


def _champion(model_dir: Path, key: ModelKey) -> str:
    checkpoint = checkpoint_files(model_dir / "checkpoints" / "step-00000010", 10)
    version = register(model_dir=model_dir, checkpoint=checkpoint, key=key, job={"name": "j"}, dataset={})
    promote(model_dir=model_dir, digest=version.digest, alias="champion", key=key, reason="first")
    return version.digest


def test_a_signed_promoted_champion_passes_and_is_listed_with_its_promotion(tmp_path: Path) -> None:
    key = ensure_model_key(tmp_path / "runtime")
    digest = _champion(tmp_path / "vitals-mlp", key)
    section = model_evidence((("vitals-mlp", tmp_path / "vitals-mlp"),), key.trust.public_key)
    assert section.status == PASS and not section.findings
    (model,) = section.detail["models"]
    assert model["champion"] == digest
    assert model["aliases"]["champion"]["signature"] == "verified"
    assert model["aliases"]["champion"]["promoted"]["seq"] == 1
    assert [(control, rule.status) for control, rule in section.rules] == [("SI-7", PASS), ("CM-3", PASS)]


def test_an_edited_promotion_record_is_a_cm3_finding(tmp_path: Path) -> None:
    key = ensure_model_key(tmp_path / "runtime")
    _champion(tmp_path / "vitals-mlp", key)
    promotions = tmp_path / "vitals-mlp" / "registry" / "promotions.jsonl"
    promotions.write_text(promotions.read_text().replace('"reason":"first"', '"reason":"later"'))
    section = model_evidence((("vitals-mlp", tmp_path / "vitals-mlp"),), key.trust.public_key)
    assert section.status == FAIL
    assert [(f.rule, f.controls) for f in section.findings] == [("models.promotions-signed", ("CM-3",))]


def test_a_champion_whose_files_changed_after_signing_is_an_si7_finding(tmp_path: Path) -> None:
    key = ensure_model_key(tmp_path / "runtime")
    digest = _champion(tmp_path / "vitals-mlp", key)
    weights = tmp_path / "vitals-mlp" / "registry" / "versions" / digest[7:] / "model" / "model.safetensors"
    weights.write_bytes(b"other weights")
    section = model_evidence((("vitals-mlp", tmp_path / "vitals-mlp"),), key.trust.public_key)
    assert section.status == FAIL
    assert [(f.rule, f.controls, f.resource) for f in section.findings] == [
        ("models.served-version-signed", ("SI-7",), f"model/vitals-mlp/{digest}")
    ]


def test_no_registry_given_is_not_assessed() -> None:
    assert model_evidence((), None).status == NOT_ASSESSED
