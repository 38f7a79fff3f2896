"""The model registry on the site storage, read and verified: what a server may serve, what it refuses.

    <model dir>/                          the model's planned path on the site storage
        checkpoints/step-NNNNNNNN/        training output: never served as it is
        decisions/                        receipts of decisions, for feedback (aifactory.data.feedback)
        registry/versions/<hex>/model/    a version's files (the checkpoint's, and its provenance)
        registry/versions/<hex>/model.sig its OpenSSF model signature (a Sigstore bundle, key mode)
        registry/promotions.jsonl         signed promotion records, one per line, chained

A version's digest (`sha256:<hex>`, also its folder's name) is the subject digest of its signed
in-toto statement: the SHA-256 over the digests of its files, as `model-signing` computes it. The
signature is verified with `model-signing`'s elliptic-key verifier against the site's public key
(`model-key/model-signing.pub` in the runtime folder), offline: key mode needs no transparency log
and makes no network call.

A promotion record names a model, an alias (`champion`, `challenger` or `canary`: a canary's record
also carries its settings, aifactory.trust.canary), a version digest and the
record before it (`after`: the SHA-256 of the previous line, the first one's is 64 zeros), and is
signed by the same site key: ECDSA over the record's RFC 8785 canonical JSON without `signature`,
so `openssl dgst -sha256 -verify model-signing.pub -signature SIG BODY` checks it too. An alias
points at the version of its newest record. Reading stops at the first record that does not verify
or does not chain: it and everything after it are refused (`bad-promotion`).

This module runs on nodes: it never imports torch, and it imports `model-signing` only to verify.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aifactory.chain import GENESIS, canonical_bytes
from aifactory.errors import ModelRefused

REGISTRY_DIR = "registry"
VERSIONS_DIR = "versions"
FILES_DIR = "model"
SIGNATURE = "model.sig"
PROVENANCE = "aifactory-provenance.json"  # inside the signed folder: signed with the weights
PROMOTIONS = "promotions.jsonl"
CHECKPOINTS_DIR = "checkpoints"
RECEIPTS_DIR = "decisions"  # receipts of decisions, for feedback (aifactory.data.feedback): never loaded
KNOWN_ENTRIES = frozenset({REGISTRY_DIR, CHECKPOINTS_DIR, "runs", RECEIPTS_DIR})  # runs/: training metrics
ALIASES = ("champion", "challenger", "canary")  # canary: serves a share first (aifactory.trust.canary)
PROMOTION_FORMAT = "aifactory.promotion/v1"
PROVENANCE_FORMAT = "aifactory.model-provenance/v1"
KEY_DIR = "model-key"
PUBLIC_KEY = "model-signing.pub"
CURVES = ("secp256r1", "secp384r1")  # what model-signing's key mode takes (P-256, P-384)


@dataclass(frozen=True)
class ModelTrust:
    """The site's model-signing public key (PEM), as deploy puts it in a node's runtime folder."""

    public_key: Path

    @classmethod
    def in_runtime_dir(cls, runtime_dir: Path) -> ModelTrust:
        return cls(runtime_dir / KEY_DIR / PUBLIC_KEY)

    def load(self) -> ec.EllipticCurvePublicKey:
        try:
            key = serialization.load_pem_public_key(self.public_key.read_bytes())
        except (OSError, ValueError) as exc:
            raise ModelRefused(
                "no-model-trust", f"no model-signing key at {self.public_key}: {exc}"
            ) from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in CURVES:
            raise ModelRefused("no-model-trust", f"{self.public_key} is not an ECDSA P-256 or P-384 key")
        return key

    def key_id(self) -> str:
        return key_id(self.load())


def key_id(public: ec.EllipticCurvePublicKey) -> str:
    """`sha256:<hex>` of the DER SubjectPublicKeyInfo (`openssl pkey -pubin -outform DER | sha256sum`)."""
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def signature_hash(public: ec.EllipticCurvePublicKey) -> hashes.HashAlgorithm:
    return hashes.SHA384() if public.curve.key_size == 384 else hashes.SHA256()


@dataclass(frozen=True)
class Registry:
    """Where one model's registry lives, below its folder on the site storage."""

    model_dir: Path

    @property
    def root(self) -> Path:
        return self.model_dir / REGISTRY_DIR

    @property
    def versions(self) -> Path:
        return self.root / VERSIONS_DIR

    @property
    def promotions(self) -> Path:
        return self.root / PROMOTIONS

    def version_dir(self, digest: str) -> Path:
        return self.versions / hex_of(digest)

    def files(self, digest: str) -> Path:
        return self.version_dir(digest) / FILES_DIR

    def signature(self, digest: str) -> Path:
        return self.version_dir(digest) / SIGNATURE

    def version_folders(self) -> list[Path]:
        try:
            return sorted(p for p in self.versions.iterdir() if not p.name.startswith("."))
        except FileNotFoundError:
            return []


def hex_of(digest: str) -> str:
    """The hex part of `sha256:<hex>`; a digest of any other form is refused (it names a folder)."""
    hex_part = digest.removeprefix("sha256:")
    if len(hex_part) != 64 or any(c not in "0123456789abcdef" for c in hex_part):
        raise ModelRefused("bad-signature", f"{digest!r} is not a sha256:<64 hex> digest")
    return hex_part


@dataclass(frozen=True)
class ModelVersion:
    """A version whose signature verified: its digest, its files and where it came from."""

    digest: str
    files: Path
    provenance: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        return {"digest": self.digest, "provenance": self.provenance}


def signed_digest(signature: Path) -> str:
    """The subject digest of the in-toto statement inside a model signature (not verified here)."""
    try:
        bundle = json.loads(signature.read_text(encoding="utf-8"))
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"], validate=True))
        subjects = statement["subject"]
        if len(subjects) != 1:
            raise ValueError("not one subject")
        return "sha256:" + str(subjects[0]["digest"]["sha256"])
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ModelRefused("bad-signature", f"{signature}: not a model signature ({exc})") from None


def verify_signature(files: Path, signature: Path, trust: ModelTrust) -> str:
    """Verify `files` against `signature` with model-signing's elliptic-key verifier; the digest."""
    trust.load()  # a missing or foreign key is `no-model-trust`, not a bad signature
    if not signature.is_file():
        raise ModelRefused("unsigned", f"{files.parent.name}: no model signature ({SIGNATURE})")
    try:
        from model_signing import verifying  # sigstore's modules load only where a model is verified
    except ImportError as exc:  # a node installed without it can verify nothing: nothing loads
        raise ModelRefused("no-model-trust", f"model-signing cannot be imported: {exc}") from None

    try:
        config = verifying.Config()  # type: ignore[no-untyped-call]  # model-signing leaves __init__ unannotated
        config.use_elliptic_key_verifier(public_key=trust.public_key).verify(files, signature)
    # Fail closed on anything the verifier raises (malformed bundles surface as protobuf, JSON, key or
    # value errors); the cause is kept in the refusal's message.
    except Exception as exc:  # noqa: BLE001
        raise ModelRefused(
            "bad-signature", f"{files.parent.name}: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    return signed_digest(signature)


def verify_version(registry: Registry, folder: Path, trust: ModelTrust) -> ModelVersion:
    """The version in `folder` (registry/versions/<hex>), verified; ModelRefused otherwise."""
    digest = verify_signature(folder / FILES_DIR, folder / SIGNATURE, trust)
    if hex_of(digest) != folder.name:
        raise ModelRefused("bad-signature", f"{folder.name}: the signature is for {digest}")
    try:
        provenance = json.loads((folder / FILES_DIR / PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelRefused("bad-signature", f"{folder.name}: no readable provenance ({exc})") from None
    return ModelVersion(digest, folder / FILES_DIR, provenance if isinstance(provenance, dict) else {})


# --- promotion records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Promotion:
    seq: int
    model: str
    alias: str
    digest: str
    previous: str | None  # the alias's digest before this record
    time: str
    by: str
    reason: str
    record: dict[str, Any] = field(repr=False, compare=False)

    def describe(self) -> dict[str, Any]:
        return dict(self.record)


def promotion_body(record: dict[str, Any]) -> bytes:
    """What a promotion's signature covers: the record without `signature`, RFC 8785 canonical."""
    return canonical_bytes({k: v for k, v in record.items() if k != "signature"})


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


@dataclass(frozen=True)
class PromotionLog:
    records: tuple[Promotion, ...]
    refused: tuple[Refusal, ...]
    head: str  # the hash the next record chains to

    def alias(self, name: str) -> Promotion | None:
        return next((p for p in reversed(self.records) if p.alias == name), None)


def read_promotions(registry: Registry, trust: ModelTrust) -> PromotionLog:
    """Every record that verifies and chains, in order; the first that does not ends the valid part."""
    try:
        lines = registry.promotions.read_bytes().splitlines()
    except FileNotFoundError:
        return PromotionLog((), (), GENESIS)
    public = trust.load()
    records: list[Promotion] = []
    head = GENESIS
    for number, line in enumerate(lines, start=1):
        problem = _promotion_problem(line, head=head, seq=len(records) + 1, model=registry.model_dir.name)
        promotion = None if problem else _promotion(line)
        if promotion is not None and not _signed_by(promotion.record, public):
            problem = "its signature does not verify against the site's model key"
        if problem or promotion is None:
            where = f"{REGISTRY_DIR}/{PROMOTIONS}:{number}"
            refused = [Refusal(where, "bad-promotion", problem or "unreadable")]
            refused += [
                Refusal(f"{REGISTRY_DIR}/{PROMOTIONS}:{n}", "bad-promotion", f"after the bad line {number}")
                for n in range(number + 1, len(lines) + 1)
            ]
            return PromotionLog(tuple(records), tuple(refused), head)
        records.append(promotion)
        head = line_hash(line)
    return PromotionLog(tuple(records), (), head)


def _promotion_problem(line: bytes, *, head: str, seq: int, model: str) -> str | None:
    try:
        record = json.loads(line)
    except ValueError:
        return "not JSON"
    if not isinstance(record, dict) or record.get("format") != PROMOTION_FORMAT:
        return f"not an {PROMOTION_FORMAT} record"
    if record.get("after") != head:
        return "it does not chain to the record before it"
    if record.get("seq") != seq:
        return f"its seq is {record.get('seq')!r}, not {seq}"
    if record.get("alias") not in ALIASES:
        return f"alias {record.get('alias')!r} is not one of {', '.join(ALIASES)}"
    if record.get("model") != model:
        return f"it is for model {record.get('model')!r}"
    try:
        hex_of(str(record.get("digest")))
    except ModelRefused as exc:
        return exc.message
    return None


def _promotion(line: bytes) -> Promotion | None:
    record = json.loads(line)
    try:
        return Promotion(
            seq=int(record["seq"]),
            model=str(record["model"]),
            alias=str(record["alias"]),
            digest=str(record["digest"]),
            previous=record.get("previous"),
            time=str(record["time"]),
            by=str(record["by"]),
            reason=str(record.get("reason") or ""),
            record=record,
        )
    except (KeyError, TypeError, ValueError):
        return None


def _signed_by(record: dict[str, Any], public: ec.EllipticCurvePublicKey) -> bool:
    try:
        signature = base64.b64decode(str(record.get("signature")), validate=True)
        public.verify(signature, promotion_body(record), ec.ECDSA(signature_hash(public)))
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


# --- what a server may serve ---------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """Something in the model folder a server will not load: where (relative to the model folder),
    the reason code (`unsigned`, `bad-signature`, `not-promoted`, `bad-promotion`, `no-model-trust`)
    and what exactly was wrong."""

    path: str
    reason: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True)
class Inspection:
    champion: ModelVersion | None
    challenger: ModelVersion | None
    promotions: PromotionLog
    refused: tuple[Refusal, ...]
    canary: ModelVersion | None = None  # the canary alias's version, verified (served or not)

    def version(self, alias: str) -> ModelVersion | None:
        return {"champion": self.champion, "challenger": self.challenger, "canary": self.canary}.get(alias)

    def alias_of(self, digest: str) -> str | None:
        return next((a for a in ALIASES if (p := self.promotions.alias(a)) and p.digest == digest), None)


_Fingerprint = tuple[tuple[str, int, int, int], ...]


class Inspector:
    """Looks at one model's folder and says what may be served; remembers each version's verification
    while its files (name, size, mtime, inode) and the trust key stay the same, so polling it every
    few seconds does not re-hash the weights."""

    def __init__(self, model_dir: Path, trust: ModelTrust) -> None:
        self.registry = Registry(model_dir)
        self.trust = trust
        self._versions: dict[str, tuple[_Fingerprint, ModelVersion | ModelRefused]] = {}

    def inspect(self) -> Inspection:
        try:
            self.trust.load()
        except ModelRefused as no_trust:
            return Inspection(None, None, PromotionLog((), (), GENESIS), (_refusal("", no_trust),))
        promotions = read_promotions(self.registry, self.trust)
        aliased = {p.digest for a in ALIASES if (p := promotions.alias(a))}
        ever_promoted = {p.digest for p in promotions.records}
        refused: list[Refusal] = list(promotions.refused)
        verified: dict[str, ModelVersion] = {}
        for folder in self.registry.version_folders():
            where = f"{REGISTRY_DIR}/{VERSIONS_DIR}/{folder.name}"
            result = self._verified(folder)
            if isinstance(result, ModelRefused):
                refused.append(_refusal(where, result))
                continue
            verified[result.digest] = result
            if result.digest not in ever_promoted:
                refused.append(Refusal(where, "not-promoted", f"{result.digest} holds no promotion record"))
        refused += self._unregistered(verified.values())
        champion, challenger, canary = (
            verified.get(p.digest) if (p := promotions.alias(a)) else None for a in ALIASES
        )
        for alias in ALIASES:
            promotion = promotions.alias(alias)
            if promotion and promotion.digest not in verified and promotion.digest in aliased:
                refused.append(
                    Refusal(
                        f"{REGISTRY_DIR}/{VERSIONS_DIR}/{hex_of(promotion.digest)}",
                        "bad-signature"
                        if self.registry.version_dir(promotion.digest).exists()
                        else "unsigned",
                        f"the {alias} {promotion.digest} is missing or does not verify",
                    )
                )
        unique = {(r.path, r.reason): r for r in refused}
        return Inspection(champion, challenger, promotions, tuple(unique.values()), canary)

    def verified(self, digest: str) -> ModelVersion | ModelRefused:
        """The registry's version `digest`, verified (remembered from `inspect` while unchanged)."""
        try:
            return self._verified(self.registry.version_dir(digest))
        except ModelRefused as refused:  # a digest that names no folder
            return refused

    def _verified(self, folder: Path) -> ModelVersion | ModelRefused:
        fingerprint = _fingerprint(folder, self.trust.public_key)
        cached = self._versions.get(folder.name)
        if cached and cached[0] == fingerprint:
            return cached[1]
        result: ModelVersion | ModelRefused
        try:
            result = verify_version(self.registry, folder, self.trust)
        except ModelRefused as refusal:
            result = refusal
        self._versions[folder.name] = (fingerprint, result)
        return result

    def _unregistered(self, versions: Any) -> Iterator[Refusal]:
        """Checkpoints no registered version came from, and anything else beside the registry."""
        registered = {str(v.provenance.get("checkpoint_json_sha256")) for v in versions}
        model_dir = self.registry.model_dir
        for entry in _listing(model_dir):
            if entry.name not in KNOWN_ENTRIES:
                yield Refusal(entry.name, "unsigned", "not in the model registry")
        for entry in _listing(model_dir / CHECKPOINTS_DIR):
            if not entry.name.startswith("step-") or not entry.is_dir():
                continue
            try:
                digest = hashlib.sha256((entry / "checkpoint.json").read_bytes()).hexdigest()
            except OSError:
                digest = ""
            if digest not in registered:
                yield Refusal(
                    f"{CHECKPOINTS_DIR}/{entry.name}", "unsigned", "training output not in the model registry"
                )


def _refusal(where: str, refused: ModelRefused) -> Refusal:
    return Refusal(where, refused.reason, refused.message)


def _listing(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _fingerprint(folder: Path, trust_key: Path) -> _Fingerprint:
    entries: list[tuple[str, int, int, int]] = []
    for path in [trust_key, *sorted(folder.rglob("*"))]:
        try:
            stat = os.stat(path)
        except OSError:
            continue
        entries.append((str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(entries)
