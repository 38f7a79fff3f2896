"""The imported bundle, checked again at audit time: intact passes SI-7/CM-14; a file changed after
import fails them; a bundle built for another plan fails CM-2. Uses a small bundle sealed by the
bundle's own code (a real build carries hundreds of MB of wheels)."""

from __future__ import annotations

from pathlib import Path

import pytest
from auditfixtures import failing_spec

from aifactory import signing
from aifactory.audit.evidence.bundle import bundle_evidence
from aifactory.bundle import import_bundle
from aifactory.bundle.manifest import BundleVersion
from aifactory.bundle.pack import Header, PayloadFile, seal
from aifactory.plan import plan_site
from aifactory.plan.model import SitePlan
from aifactory.state import SiteState

SITE = "labbundle"


def _import(tmp_path: Path, plan: SitePlan, *, plan_digest: str, version: str) -> tuple[Path, Path]:
    keys = signing.generate_keypair(
        tmp_path / f"keys-{version}", identity="release@lab.example", namespaces="aifactory-bundle"
    )
    payload = {"plan.json": plan.to_json().encode(), "files/model.safetensors": b"\x00weights" * 4096}
    files = {}
    for name, data in payload.items():
        source = tmp_path / f"payload-{version}" / name
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(data)
        files[name] = PayloadFile(source, "extra")
    header = Header(
        site=SITE,
        version=BundleVersion.parse(version),
        created="2026-11-22T08:00:00Z",
        timestamp=1_795_000_000,
        plan_digest=plan_digest,
        spec_digest=plan.spec_digest,
        aifactory_version="test",
        contents={},
    )
    sealed = seal(
        files,
        header,
        key=signing.load_private_key(keys.private),
        output=tmp_path / f"{version}.tar",
        work=tmp_path / f"meta-{version}",
    )
    imported = import_bundle(
        sealed.parts[0] if sealed.parts else tmp_path / f"{version}.tar",
        trust=keys.allowed_signers,
        site_state=SiteState.for_site(SITE),
        home=tmp_path / "home",
    )
    return imported.root, keys.allowed_signers


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> SitePlan:
    return plan_site(failing_spec(tmp_path_factory.mktemp("spec"), name=SITE), write_lock=False).plan


def _statuses(evidence) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {control: verdict.status for control, verdict in evidence.rules}


def test_no_import_is_not_assessed(plan: SitePlan) -> None:
    evidence, digest = bundle_evidence(SiteState.for_site("labnobundle"), plan.digest())
    assert digest is None and evidence.status == "not-assessed"


def test_intact_import_passes_and_a_changed_file_fails(plan: SitePlan, tmp_path: Path) -> None:
    root, trust = _import(tmp_path, plan, plan_digest=plan.digest(), version="1.0")
    state = SiteState.for_site(SITE)
    evidence, digest = bundle_evidence(state, plan.digest(), trust=trust)
    assert evidence.status == "pass", evidence.detail
    assert _statuses(evidence) == {"SI-7": "pass", "CM-14": "pass", "CM-2": "pass"}
    assert digest and digest.startswith("sha256:")
    assert evidence.detail["signature"].startswith("verifies")
    other = signing.generate_keypair(tmp_path / "other", identity="mallory", namespaces="aifactory-bundle")
    untrusted, _ = bundle_evidence(state, plan.digest(), trust=other.allowed_signers)
    assert _statuses(untrusted)["SI-7"] == "fail"
    weights = root / "files" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    evidence, _ = bundle_evidence(state, plan.digest())
    assert _statuses(evidence)["SI-7"] == "fail"
    assert any("files/model.safetensors" in f.message for f in evidence.findings)


def test_bundle_for_another_plan_fails_cm2(plan: SitePlan, tmp_path: Path) -> None:
    _import(tmp_path, plan, plan_digest="sha256:" + "0" * 64, version="2.0")
    evidence, _ = bundle_evidence(SiteState.for_site(SITE), plan.digest())
    assert _statuses(evidence) == {"SI-7": "pass", "CM-14": "pass", "CM-2": "fail"}
