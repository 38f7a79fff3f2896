"""The training manifest (signed by the site from what a job read, checked against a signed dataset
version) and the signed sign-off: real dataset versions, real keys, real SSHSIG; no torch."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from aifactory.data.versions import Version, read_history
from aifactory.errors import LoopError
from aifactory.loop.manifest import (
    JobRef,
    check_not_trained_on,
    sign_training_manifest,
    verify_training_manifest,
)
from aifactory.loop.signoff import make_sign_off, verified_sign_off
from aifactory.runtime.job import DATA_READ_FORMAT
from aifactory.signing import generate_keypair
from aifactory.trust.issuing.models import ModelKey

from .conftest import MakeVersion

JOB = JobRef("loop-vitals-mlp-t1", "41", "rt-" + "c" * 32)
FILES = {"manifest.json": b'{"format": "aifactory.dataset/v1"}', "shard-00000.safetensors": b"samples one"}


def _version(tmp_path: Path, name: str) -> Version:
    return read_history(tmp_path / "storage" / name, ModelKey(tmp_path / "runtime").trust, dataset=name).find(
        "1"
    )


def _read(version: Version, **changes: Any) -> dict[str, Any]:
    """What the job's data-read.json says: every data file of the version, as read."""
    files = [{"path": f["path"], "sha256": f["sha256"], "size": f["size"]} for f in version.files]
    return {"format": DATA_READ_FORMAT, "job": JOB.name, "dataset": "vitals", "files": files, **changes}


@pytest.fixture
def version(make_version: MakeVersion, tmp_path: Path) -> Version:
    make_version("vitals", FILES)
    return _version(tmp_path, "vitals")


def test_the_files_a_job_read_from_its_version_make_a_signed_manifest_that_verifies(
    version: Version, tmp_path: Path
) -> None:
    key = ModelKey(tmp_path / "runtime")
    manifest = sign_training_manifest(
        model="vitals-mlp", job=JOB, data_read=_read(version), version=version, key=key
    )
    assert manifest["job"] == JOB.as_dict()
    training = verify_training_manifest(
        manifest, trust=key.trust, dataset_dirs={"vitals": tmp_path / "storage/vitals"}
    )
    assert training.identities() == [{"dataset": "vitals", "version": 1, "digest": version.digest}]
    assert sorted(f.path for f in training.datasets[0].files) == sorted(FILES)


def test_a_file_the_version_does_not_hold_is_refused(version: Version, tmp_path: Path) -> None:
    read = _read(version)
    read["files"][0]["sha256"] = "0" * 64  # the folder changed after the version was made
    with pytest.raises(LoopError) as refused:
        sign_training_manifest(
            model="vitals-mlp", job=JOB, data_read=read, version=version, key=ModelKey(tmp_path / "runtime")
        )
    assert refused.value.code == "training-data-not-in-version"
    with pytest.raises(LoopError):  # another dataset's files
        sign_training_manifest(
            model="vitals-mlp",
            job=JOB,
            data_read=_read(version, dataset="vitals-holdout"),
            version=version,
            key=ModelKey(tmp_path / "runtime"),
        )


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda m: m["datasets"][0]["files"].pop(), id="a-file-left-out"),
        pytest.param(lambda m: m["job"].update(slurm_job_id="42"), id="another-job"),
        pytest.param(lambda m: m["datasets"][0].update(version=2), id="another-version"),
    ],
)
def test_a_changed_manifest_does_not_verify(version: Version, tmp_path: Path, change: Any) -> None:
    key = ModelKey(tmp_path / "runtime")
    manifest = sign_training_manifest(
        model="vitals-mlp", job=JOB, data_read=_read(version), version=version, key=key
    )
    changed = copy.deepcopy(manifest)
    change(changed)
    with pytest.raises(LoopError) as refused:
        verify_training_manifest(
            changed, trust=key.trust, dataset_dirs={"vitals": tmp_path / "storage/vitals"}
        )
    assert refused.value.code == "training-manifest-unverified"


def test_a_signed_manifest_naming_a_file_its_version_does_not_hold_does_not_verify(
    version: Version, tmp_path: Path
) -> None:
    """Signed by the site but wrong about the data (the version's file is another): the check against
    the dataset version catches what the signature alone cannot."""
    from aifactory.data.versions import sign_record

    key = ModelKey(tmp_path / "runtime")
    manifest = sign_training_manifest(
        model="vitals-mlp", job=JOB, data_read=_read(version), version=version, key=key
    )
    body = {k: v for k, v in manifest.items() if k not in ("signature", "key")}
    body["datasets"][0]["files"][0]["sha256"] = "1" * 64
    with pytest.raises(LoopError, match="which is not that file"):
        verify_training_manifest(
            sign_record(body, key), trust=key.trust, dataset_dirs={"vitals": tmp_path / "storage/vitals"}
        )


def test_a_training_version_holding_an_evaluation_file_is_refused_before_training(
    make_version: MakeVersion,
) -> None:
    evaluation = make_version(
        "vitals-holdout", {"manifest.json": b"holdout", "shard-00000.safetensors": b"held"}
    )
    clean = make_version("vitals", FILES)
    check_not_trained_on(clean, evaluation)  # disjoint: no error
    leaked = make_version("vitals", {**FILES, "copied/held.bin": b"held"})
    with pytest.raises(LoopError) as refused:
        check_not_trained_on(leaked, evaluation)
    assert refused.value.code == "eval-set-in-training"
    assert "copied/held.bin" in refused.value.message
    with pytest.raises(LoopError):  # the evaluation set itself as training data
        check_not_trained_on(evaluation, evaluation)


def test_a_sign_off_verifies_only_as_signed_for_its_site_model_and_signer(tmp_path: Path) -> None:
    ade = generate_keypair(
        tmp_path / "ade", identity="dr.ade@health.example", namespaces="aifactory-sign-off"
    )
    other = generate_keypair(tmp_path / "other", identity="other@health.example")
    challenger = "sha256:" + "b" * 64
    signed = make_sign_off(
        site="looplab",
        model="vitals-mlp",
        challenger=challenger,
        key=ade.private,
        allowed_signers=ade.allowed_signers,
    )
    assert signed.document["by"] == "dr.ade@health.example"  # the trust file's name for the key
    checks = {"site": "looplab", "model": "vitals-mlp", "allowed_signers": ade.allowed_signers}
    given = verified_sign_off(signed, **checks)  # type: ignore[arg-type]
    assert (given.by, given.challenger, given.signature_verified) == (
        "dr.ade@health.example",
        challenger,
        True,
    )

    for field, value in (("challenger", "sha256:" + "c" * 64), ("by", "other@health.example")):
        altered = type(signed)({**signed.document, field: value}, signed.signature)
        assert not verified_sign_off(altered, **checks).signature_verified  # type: ignore[arg-type]
    assert not verified_sign_off(signed, **{**checks, "model": "other-model"}).signature_verified  # type: ignore[arg-type]
    # A trust file that does not name the key: not verified.
    assert not verified_sign_off(
        signed, **{**checks, "allowed_signers": other.allowed_signers}
    ).signature_verified  # type: ignore[arg-type]
