"""The issuing side of signed models (the admin's control host): the site's model-signing key, signing a
trained checkpoint into the registry, and signed promotions (champion, challenger, canary).

The key pair is made on first use in the runtime part of the site's state folder, like the token key:

    model-key/signing_key.pem     ECDSA P-256, PKCS#8 PEM, 0600 in a 0700 folder: stays on this machine
    model-key/model-signing.pub   its public half (SubjectPublicKeyInfo PEM): deploy copies it to nodes

`register` copies a complete checkpoint (its SHA-256s checked) and a provenance file (model, step,
training job, dataset and its manifest's SHA-256, the checkpoint it came from) into a staging folder,
signs the folder with `model-signing` (key mode: no transparency log, nothing leaves the machine),
and renames it to `registry/versions/<digest hex>`. `promote` appends a signed promotion record.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import json
import os
import shutil
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aifactory.chain import canonical_bytes
from aifactory.errors import ModelRefused, ModelRegistryError
from aifactory.trust.canary import CanarySettings
from aifactory.trust.models import (
    ALIASES,
    FILES_DIR,
    KEY_DIR,
    PROMOTION_FORMAT,
    PROVENANCE,
    PROVENANCE_FORMAT,
    PUBLIC_KEY,
    SIGNATURE,
    ModelTrust,
    ModelVersion,
    Registry,
    key_id,
    read_promotions,
    signature_hash,
    signed_digest,
    verify_version,
)

PRIVATE_KEY = "signing_key.pem"
CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "checkpoint.json")


@dataclass(frozen=True)
class ModelKey:
    """The site's model-signing key pair in the runtime part of the state folder."""

    runtime_dir: Path

    @property
    def folder(self) -> Path:
        return self.runtime_dir / KEY_DIR

    @property
    def private_key(self) -> Path:
        return self.folder / PRIVATE_KEY

    @property
    def trust(self) -> ModelTrust:
        return ModelTrust(self.folder / PUBLIC_KEY)

    def load(self) -> ec.EllipticCurvePrivateKey:
        try:
            key = serialization.load_pem_private_key(self.private_key.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ModelRegistryError(
                f"cannot read the site's model-signing key {self.private_key}: {exc}",
                hint="it is made on first use by `aifactory models register`",
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ModelRegistryError(f"{self.private_key} is not an ECDSA key")
        return key


def ensure_model_key(runtime_dir: Path) -> ModelKey:
    """Create the site's model-signing key pair on first use (generated here, 0600, never copied in)."""
    key = ModelKey(runtime_dir)
    if key.private_key.exists():
        return key
    key.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key.folder.chmod(0o700)
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    staging = key.folder / f".{PRIVATE_KEY}.{os.getpid()}"
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (key.folder / PUBLIC_KEY).write_bytes(public)
    (key.folder / PUBLIC_KEY).chmod(0o644)
    os.rename(staging, key.private_key)  # last: a key pair is whole or absent
    return key


def register(
    *,
    model_dir: Path,
    checkpoint: Path,
    key: ModelKey,
    job: dict[str, Any],
    dataset: dict[str, Any],
    training_manifest: dict[str, Any] | None = None,
) -> ModelVersion:
    """Sign `checkpoint` (a complete checkpoint folder) into the model's registry; the version. A
    loop's retraining passes its signed training manifest (aifactory.loop.manifest): it goes into the
    provenance, under the model's signature too (absent otherwise, so older provenance keeps its bytes)."""
    document = _checked_checkpoint(checkpoint)
    registry = Registry(model_dir)
    registry.versions.mkdir(parents=True, exist_ok=True)
    staging = registry.versions / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / FILES_DIR).mkdir(parents=True)
    try:
        for name in CHECKPOINT_FILES:
            shutil.copyfile(checkpoint / name, staging / FILES_DIR / name)
        provenance = {
            "format": PROVENANCE_FORMAT,
            "model": model_dir.name,
            "step": int(document["step"]),
            "checkpoint": f"{checkpoint.parent.name}/{checkpoint.name}",
            "checkpoint_json_sha256": hashlib.sha256(
                (checkpoint / "checkpoint.json").read_bytes()
            ).hexdigest(),
            "job": job,
            "dataset": dataset,
            "key": key_id(key.load().public_key()),
        }
        if training_manifest is not None:
            provenance["training_manifest"] = training_manifest
        (staging / FILES_DIR / PROVENANCE).write_bytes(canonical_bytes(provenance) + b"\n")
        _sign(staging / FILES_DIR, staging / SIGNATURE, key)
        digest = signed_digest(staging / SIGNATURE)
        final = registry.version_dir(digest)
        if final.exists():  # the same bytes registered before: that version stands
            shutil.rmtree(staging)
        else:
            os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return verify_version(registry, final, key.trust)


def _checked_checkpoint(checkpoint: Path) -> dict[str, Any]:
    try:
        document: dict[str, Any] = json.loads((checkpoint / "checkpoint.json").read_text(encoding="utf-8"))
        files = dict(document["files"])
        for name, expected in files.items():
            if hashlib.sha256((checkpoint / name).read_bytes()).hexdigest() != expected:
                raise ValueError(f"{name} does not match its SHA-256")
        if set(files) | {"checkpoint.json"} != set(CHECKPOINT_FILES):
            raise ValueError(f"it holds {sorted(files)}, not the files of a checkpoint")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelRegistryError(
            f"{checkpoint} is not a complete checkpoint: {exc}", code="checkpoint-invalid"
        ) from None
    return document


def _sign(files: Path, signature: Path, key: ModelKey) -> None:
    from model_signing import signing  # sigstore's modules load only where a model is signed

    config = signing.Config()  # type: ignore[no-untyped-call]  # model-signing leaves __init__ unannotated
    config.use_elliptic_key_signer(private_key=key.private_key).sign(files, signature)


def promote(
    *,
    model_dir: Path,
    digest: str,
    alias: str,
    key: ModelKey,
    reason: str = "",
    now: datetime | None = None,
    canary: CanarySettings | None = None,
) -> dict[str, Any]:
    """Point `alias` at the version `digest` (which must verify) with a signed, chained record. The
    `canary` alias takes its settings (`canary`), signed into the record: servers read them there."""
    if alias not in ALIASES:
        raise ModelRegistryError(f"alias {alias!r} is not one of {', '.join(ALIASES)}", code="usage")
    if (alias == "canary") != (canary is not None):
        raise ModelRegistryError("canary settings go with the canary alias, and only there", code="usage")
    registry = Registry(model_dir)
    try:
        verify_version(registry, registry.version_dir(digest), key.trust)
    except ModelRefused as refused:
        raise ModelRegistryError(
            f"cannot promote {digest}: {refused.message}", code="model-refused", hint=refused.hint
        ) from None
    log = read_promotions(registry, key.trust)
    if log.refused:
        raise ModelRegistryError(
            f"{registry.promotions} has a record that does not verify ({log.refused[0].detail})",
            code="bad-promotion",
            hint="restore the file from the site's backup before promoting again",
        )
    current = log.alias(alias)
    private = key.load()
    record: dict[str, Any] = {
        "format": PROMOTION_FORMAT,
        "seq": len(log.records) + 1,
        "after": log.head,
        "model": model_dir.name,
        "alias": alias,
        "digest": digest,
        "previous": current.digest if current else None,
        "time": (now or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "by": f"{getpass.getuser()}@{socket.gethostname()}",
        "reason": reason,
        "key": key_id(private.public_key()),
    }
    if canary is not None:  # absent otherwise, so the other records keep their bytes
        record["canary"] = canary.as_dict()
    signature = private.sign(canonical_bytes(record), ec.ECDSA(signature_hash(private.public_key())))
    record["signature"] = base64.b64encode(signature).decode()
    line = json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    with open(registry.promotions, "ab") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
    return record
