"""Dataset versions (issue 29): content-addressed manifests signed by the site key, never rewritten,
classification and residency inherited, each new version decided by the real runtime policy (a version
that would be stored outside the residency is refused, nothing written), pending feedback landing in
the next version, and the erasure of one subject. Real signatures (checked with OpenSSL too), the real
Rego engine (regorus), files on a real folder standing for the site storage."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from aifactory.chain import canonical_bytes
from aifactory.data.feedback import FeedbackRequest, Receipt, pending_dir, store_feedback
from aifactory.data.versions import (
    FEEDBACK_FILE,
    DatasetStore,
    create_version,
    erase_subject,
    read_history,
    subject_digest,
)
from aifactory.errors import DatasetVersionError, PolicyDenied, UsageError
from aifactory.plan import plan_site
from aifactory.plan.model import SitePlan
from aifactory.policy import RuntimeAuthorizer
from aifactory.trust.issuing.models import ModelKey, ensure_model_key

from .conftest import FIXTURES, RuntimeSite


@pytest.fixture(scope="module")
def plan(site: RuntimeSite) -> SitePlan:
    return SitePlan.load(site.plan_path)


@pytest.fixture(scope="module")
def authorizer(plan: SitePlan) -> RuntimeAuthorizer:
    return RuntimeAuthorizer(plan)


@pytest.fixture
def key(site: RuntimeSite) -> ModelKey:
    return ensure_model_key(site.runtime_dir)


@pytest.fixture
def dataset_dir(site: RuntimeSite, tmp_path: Path) -> Path:
    """A copy of the generated dataset (manifest.json and its shards) on a storage of this test's own."""
    target = tmp_path / "storage" / "vitals"
    shutil.copytree(site.dataset_dir, target)
    return target


def feedback(dataset_dir: Path, decision: str, subject: str, outcome: object, tenant: str = "health") -> None:
    """A pending record as a server writes it (tests/runtime/test_feedback.py sends real ones)."""
    receipt = Receipt(
        decision, tenant, "vitals-mlp", "sha256:" + "a" * 64, "rtlab-cpu-001", "2026-12-01T00:00:00Z"
    )
    store_feedback(
        dataset_dir,
        receipt=receipt,
        dataset="vitals",
        request=FeedbackRequest("vitals", subject, outcome),
        feedback_decision="f" * 32,
        host="rtlab-cpu-001",
        country="NG",
    )


def make(plan: SitePlan, dataset_dir: Path, key: ModelKey, authorizer: RuntimeAuthorizer):  # noqa: ANN201
    return create_version(
        plan=plan, dataset="vitals", dataset_dir=dataset_dir, key=key, authorizer=authorizer
    )


def test_a_version_lists_every_file_with_its_sha256_signed_by_the_site_key_and_inherits_the_plan(
    plan: SitePlan, dataset_dir: Path, key: ModelKey, authorizer: RuntimeAuthorizer, tmp_path: Path
) -> None:
    made = make(plan, dataset_dir, key, authorizer)
    version = made.version
    expected = {
        p.relative_to(dataset_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in dataset_dir.iterdir()
        if p.is_file()
    }
    assert {f["path"]: f["sha256"] for f in version.files} == expected
    assert all(f["state"] == "present" for f in version.files)
    manifest = version.manifest
    assert (manifest["owner"], manifest["classification"], manifest["residency"]) == (
        "health",
        "confidential",
        "NG",
    )
    assert (manifest["version"], manifest["previous"], manifest["stored_in"]) == (1, None, ["NG"])
    assert len(manifest["policy_decisions"]) == 1  # the policy allowed it, once per country (NG)
    store = DatasetStore(dataset_dir)
    for item in version.files:  # content-addressed: each object is its digest
        assert hashlib.sha256(store.object(item["sha256"]).read_bytes()).hexdigest() == item["sha256"]
    # The signature is ECDSA over the manifest's canonical JSON without `signature`: OpenSSL checks it.
    body = tmp_path / "body.json"
    body.write_bytes(canonical_bytes({k: v for k, v in manifest.items() if k != "signature"}))
    signature = tmp_path / "sig.der"
    signature.write_bytes(base64.b64decode(manifest["signature"]))
    checked = subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha256",
            "-verify",
            str(key.trust.public_key),
            "-signature",
            str(signature),
            str(body),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert version.digest == "sha256:" + hashlib.sha256(body.read_bytes()).hexdigest()
    history = read_history(dataset_dir, key.trust, dataset="vitals")
    assert (history.ok, [v.number for v in history.versions]) == (True, [1])


def test_versions_are_never_rewritten_and_a_change_to_one_does_not_verify(
    plan: SitePlan, dataset_dir: Path, key: ModelKey, authorizer: RuntimeAuthorizer
) -> None:
    first = make(plan, dataset_dir, key, authorizer).version
    store = DatasetStore(dataset_dir)
    manifest_bytes = store.manifest(1).read_bytes()
    (dataset_dir / "notes.txt").write_text("a file added later\n")
    second = make(plan, dataset_dir, key, authorizer).version
    assert store.manifest(1).read_bytes() == manifest_bytes  # v1 as it was
    assert second.manifest["previous"] == first.digest and second.number == 2
    assert "notes.txt" in {f["path"] for f in second.files} and "notes.txt" not in {
        f["path"] for f in first.files
    }
    assert store.manifest(1).stat().st_mode & 0o777 == 0o444
    # An object changed on the storage: the versions holding it no longer verify.
    shard = next(f for f in first.files if f["path"].endswith(".safetensors"))
    target = store.object(shard["sha256"])
    target.chmod(0o644)
    target.write_bytes(b"changed")
    history = read_history(dataset_dir, key.trust, dataset="vitals")
    assert not history.ok
    assert any(f"{shard['path']} is altered" in p for p in history.problems)
    # ... and a new version is refused on top of a history that does not verify.
    with pytest.raises(DatasetVersionError) as refused:
        make(plan, dataset_dir, key, authorizer)
    assert refused.value.code == "dataset-history-invalid"


def test_a_manifest_edited_or_signed_by_another_key_does_not_verify(
    plan: SitePlan, dataset_dir: Path, key: ModelKey, authorizer: RuntimeAuthorizer, tmp_path: Path
) -> None:
    make(plan, dataset_dir, key, authorizer)
    store = DatasetStore(dataset_dir)
    manifest = json.loads(store.manifest(1).read_bytes())
    store.manifest(1).chmod(0o644)
    store.manifest(1).write_bytes(canonical_bytes({**manifest, "classification": "public"}) + b"\n")
    problems = read_history(dataset_dir, key.trust, dataset="vitals").problems
    assert any("digest is not the one the lineage names" in p for p in problems)
    assert any("signature does not verify" in p for p in problems)
    other = ensure_model_key(tmp_path / "another-site")
    assert not read_history(dataset_dir, other.trust, dataset="vitals").ok


def test_pending_feedback_lands_in_the_next_version_and_stays_in_later_ones(
    plan: SitePlan, dataset_dir: Path, key: ModelKey, authorizer: RuntimeAuthorizer
) -> None:
    feedback(dataset_dir, "1" * 32, "patient-1", {"label": 2})
    feedback(dataset_dir, "2" * 32, "patient-2", "correct")
    first = make(plan, dataset_dir, key, authorizer)
    assert (first.added, first.version.manifest["feedback"]) == (2, {"records": 2, "added": 2})
    assert list(pending_dir(dataset_dir).iterdir()) == []  # no longer pending
    feedback(dataset_dir, "3" * 32, "patient-1", {"label": 0})
    second = make(plan, dataset_dir, key, authorizer).version
    store = DatasetStore(dataset_dir)
    entry = next(f for f in second.files if f["path"] == FEEDBACK_FILE)
    lines = [json.loads(line) for line in store.object(entry["sha256"]).read_bytes().splitlines()]
    assert [(r["decision_id"], r["subject"], r["outcome"]) for r in lines] == [
        ("1" * 32, "patient-1", {"label": 2}),
        ("2" * 32, "patient-2", "correct"),
        ("3" * 32, "patient-1", {"label": 0}),
    ]
    assert second.manifest["feedback"] == {"records": 3, "added": 1}


def _site_with_replica_in(country: str, tmp_path: Path) -> SitePlan:
    """The runtime site with the dataset's storage replicated to a datacenter in `country`."""
    text = (FIXTURES / "site.yaml").read_text()
    text = text.replace(
        "fabrics:\n",
        f"  - name: dc2\n    country: {country}\n    region: {country}-AA\nfabrics:\n",
        1,
    )
    text = text.replace(
        "    mounted_by: [cpu, control]\n",
        "    mounted_by: [cpu, control]\n    replicas: [offsite]\n"
        "  - name: offsite\n    kind: nfs\n    datacenter: dc2\n    capacity_tib: 1\n"
        "    encrypted_at_rest: true\n    mount_path: /srv/offsite\n    mounted_by: [control]\n",
        1,
    )
    spec = tmp_path / "site.yaml"
    spec.write_text(text)
    return plan_site(spec, write_lock=False).plan


def test_a_version_that_would_be_stored_outside_the_residency_is_refused_by_policy_and_nothing_is_written(
    dataset_dir: Path, key: ModelKey, tmp_path: Path
) -> None:
    plan = _site_with_replica_in("GH", tmp_path)  # vitals' residency is NG; its storage copies to GH
    feedback(dataset_dir, "4" * 32, "patient-4", "wrong")
    with pytest.raises(PolicyDenied) as refused:
        make(plan, dataset_dir, key, RuntimeAuthorizer(plan))
    assert refused.value.code == "version-refused"
    assert "GH: outside-residency" in refused.value.message
    assert not DatasetStore(dataset_dir).lineage.exists()
    assert list(DatasetStore(dataset_dir).root.glob("v*.json")) == []
    assert len(list(pending_dir(dataset_dir).iterdir())) == 1  # the feedback waits, still inside NG


def test_the_policy_failing_refuses_the_version_fail_closed(
    plan: SitePlan, dataset_dir: Path, key: ModelKey
) -> None:
    starved = RuntimeAuthorizer(plan, time_limit_s=1e-9)  # every evaluation times out: engine-timeout
    with pytest.raises(PolicyDenied) as refused:
        make(plan, dataset_dir, key, starved)
    assert "engine-timeout" in refused.value.message
    assert not DatasetStore(dataset_dir).lineage.exists()


def test_erasing_a_subject_leaves_it_nowhere_and_the_history_still_verifies(
    plan: SitePlan, dataset_dir: Path, key: ModelKey, authorizer: RuntimeAuthorizer
) -> None:
    feedback(dataset_dir, "a" * 32, "patient-gone", {"note": "SECRET-OUTCOME-1"})
    feedback(dataset_dir, "b" * 32, "patient-kept", {"note": "kept-outcome"})
    v1 = make(plan, dataset_dir, key, authorizer).version
    feedback(dataset_dir, "c" * 32, "patient-gone", {"note": "SECRET-OUTCOME-2"})
    v2 = make(plan, dataset_dir, key, authorizer).version
    feedback(dataset_dir, "d" * 32, "patient-gone", {"note": "SECRET-OUTCOME-3"})  # still pending
    store = DatasetStore(dataset_dir)
    old = {next(f["sha256"] for f in v.files if f["path"] == FEEDBACK_FILE) for v in (v1, v2)}

    record = erase_subject(
        plan=plan,
        dataset="vitals",
        dataset_dir=dataset_dir,
        key=key,
        authorizer=authorizer,
        subject="patient-gone",
        authority="DPO ticket 2026-117 (GDPR art. 17)",
    )

    # The new version holds the other subject only; the old files that held the subject are gone.
    history = read_history(dataset_dir, key.trust, dataset="vitals")
    assert history.ok, history.problems
    v3 = history.find("3")
    entry = next(f for f in v3.files if f["path"] == FEEDBACK_FILE)
    kept = [json.loads(line) for line in store.object(entry["sha256"]).read_bytes().splitlines()]
    assert [r["subject"] for r in kept] == ["patient-kept"]
    for sha in old:
        assert not store.object(sha).exists()
    for number in (1, 2):
        states = {f["path"]: f["state"] for f in history.find(str(number)).files}
        assert states[FEEDBACK_FILE] == "destroyed"
        assert all(s == "present" for p, s in states.items() if p != FEEDBACK_FILE)
        assert store.mark(number, record["seq"]).is_file()  # the manifest is marked, not changed
    assert list(pending_dir(dataset_dir).iterdir()) == []
    # Nothing under the dataset's folder holds the subject or what was said about it any more.
    for path in dataset_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"patient-gone" not in data and b"SECRET-OUTCOME" not in data, path
    # The erasure record: what, when, on whose authority; the subject only as a digest; signed.
    assert record["kind"] == "erasure" and record["authority"] == "DPO ticket 2026-117 (GDPR art. 17)"
    assert record["subject"] == subject_digest("vitals", "patient-gone")
    assert (record["records_erased"], record["pending_erased"]) == (2, 1)
    assert [d["versions"] for d in record["destroyed"]] in ([[1], [2]], [[2], [1]])
    assert record["new_version"] == {"version": 3, "digest": v3.digest}
    assert history.erasures == (record,)


@pytest.mark.parametrize("ref", ["../../etc/passwd", "v0", "sha256:" + "0" * 64, "", "1/../2", "v1\n"])
def test_a_version_that_is_not_there_is_refused_by_name(
    plan: SitePlan, dataset_dir: Path, key: ModelKey, authorizer: RuntimeAuthorizer, ref: str
) -> None:
    make(plan, dataset_dir, key, authorizer)
    with pytest.raises(DatasetVersionError) as refused:
        read_history(dataset_dir, key.trust, dataset="vitals").find(ref)
    assert refused.value.code == "dataset-version-not-found"


@pytest.mark.parametrize("subject", ["../../etc/passwd", "", "a/b", "x\n", "-starts-with-dash", "é"])
def test_an_erasure_subject_outside_its_grammar_is_refused_before_anything_changes(
    plan: SitePlan, dataset_dir: Path, key: ModelKey, authorizer: RuntimeAuthorizer, subject: str
) -> None:
    with pytest.raises(UsageError):
        erase_subject(
            plan=plan,
            dataset="vitals",
            dataset_dir=dataset_dir,
            key=key,
            authorizer=authorizer,
            subject=subject,
            authority="court order 12",
        )
    assert not DatasetStore(dataset_dir).root.exists()


def test_a_link_in_the_dataset_is_refused(
    plan: SitePlan, dataset_dir: Path, key: ModelKey, authorizer: RuntimeAuthorizer
) -> None:
    (dataset_dir / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(DatasetVersionError) as refused:
        make(plan, dataset_dir, key, authorizer)
    assert refused.value.code == "dataset-link-refused"


def test_an_erasure_cut_off_after_its_record_is_finished_before_the_next_version(
    plan: SitePlan,
    dataset_dir: Path,
    key: ModelKey,
    authorizer: RuntimeAuthorizer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    feedback(dataset_dir, "a" * 32, "patient-gone", "SECRET-OUTCOME")
    v1 = make(plan, dataset_dir, key, authorizer).version
    old = next(f["sha256"] for f in v1.files if f["path"] == FEEDBACK_FILE)

    def crash(path: Path) -> None:
        raise OSError("power lost")

    monkeypatch.setattr("aifactory.data.versions._destroy", crash)
    with pytest.raises(OSError):
        erase_subject(
            plan=plan,
            dataset="vitals",
            dataset_dir=dataset_dir,
            key=key,
            authorizer=authorizer,
            subject="patient-gone",
            authority="court order 12",
        )
    history = read_history(dataset_dir, key.trust, dataset="vitals")
    assert any("should have been destroyed" in p for p in history.problems)  # the record says so
    monkeypatch.undo()
    made = make(plan, dataset_dir, key, authorizer)  # finishes the erasure from its signed record first
    assert not DatasetStore(dataset_dir).object(old).exists()
    history = read_history(dataset_dir, key.trust, dataset="vitals")
    assert history.ok, history.problems
    assert made.version.number == 3 and len(history.erasures) == 1
