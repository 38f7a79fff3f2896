"""The signed activation record: an administrator's authorization to go back to an older bundle.

Anti-rollback refuses any bundle older than the newest one imported for a site (an older bundle may
lack security fixes). A deliberate return to a known-good version passes it only with this record:

    <state>/<site>/lifecycle/activations/<version>.json       what was authorized (canonical JSON)
    <state>/<site>/lifecycle/activations/<version>.json.sig   the admin's SSHSIG (aifactory-activation)

    {"digest": "sha256:...", "reason": "...", "schema": "aifactory.activation/v1", "site": "...",
     "time": "2026-12-02T09:00:00Z", "version": "20261201.1", "who": "<principal>"}

It is checked as the stock tool checks it, against the site's trust file (the allowed_signers given
to `bundle import --trust`), where the admin's key is listed for this namespace:

    ssh-keygen -Y verify -f allowed_signers -I WHO -n aifactory-activation -s V.json.sig < V.json

A record authorizes exactly one site, one version with one content digest, for MAX_AGE after it was
signed (so an old authorization cannot be replayed months later), and only when its `who` is the
principal the trust file grants the signing key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aifactory import signing
from aifactory.allowed_signers import AllowedSigners
from aifactory.digests import sha256_bytes
from aifactory.durable import atomic_write
from aifactory.errors import ActivationError, Location, SignatureError, SignerUntrusted
from aifactory.state import SiteState

NAMESPACE = "aifactory-activation"
SCHEMA = "aifactory.activation/v1"
MAX_AGE = timedelta(hours=24)  # an authorization is for a rollback now, not a standing permission
CLOCK_SKEW = timedelta(minutes=5)  # a record signed on a machine whose clock runs a little ahead
MAX_RECORD_BYTES = 64 * 1024
MAX_REASON = 500
FOLDER = ("lifecycle", "activations")
# The bundle version grammar is BundleVersion's (aifactory.bundle.manifest, which callers parse with);
# this only keeps a version from naming a path outside the folder.
_SAFE_VERSION = re.compile(r"[0-9]{1,20}(\.[0-9]{1,20}){0,5}")  # fullmatch: `$` alone lets "1.0\n" through
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_FIELDS = ("digest", "reason", "schema", "site", "time", "version", "who")


@dataclass(frozen=True)
class ActivationRecord:
    site: str
    version: str
    digest: str  # sha256 of the bundle's manifest.json, as `bundle verify` reports it
    time: str  # ISO 8601 UTC, whole seconds
    reason: str
    who: str  # the principal the trust file grants the signing key

    def to_bytes(self) -> bytes:
        body = {"schema": SCHEMA, **self.as_dict()}
        return (json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    def as_dict(self) -> dict[str, str]:
        return {
            "site": self.site,
            "version": self.version,
            "digest": self.digest,
            "time": self.time,
            "reason": self.reason,
            "who": self.who,
        }

    @property
    def signed_at(self) -> datetime:
        return datetime.fromisoformat(self.time.replace("Z", "+00:00"))

    @classmethod
    def parse(cls, data: bytes, *, source: str) -> ActivationRecord:
        where = Location(file=source)
        try:
            body = json.loads(data.decode())
        except (UnicodeDecodeError, ValueError) as exc:
            raise ActivationError(
                f"the activation record is not JSON: {exc}", code="activation-unreadable", location=where
            ) from None
        if not isinstance(body, dict) or sorted(body) != sorted(_FIELDS):
            raise ActivationError(
                f"the activation record must hold exactly the fields {', '.join(_FIELDS)}",
                code="activation-unreadable",
                location=where,
            )
        if body["schema"] != SCHEMA or not all(isinstance(body[f], str) for f in _FIELDS):
            raise ActivationError(
                f"the activation record is not an {SCHEMA} record",
                code="activation-unreadable",
                location=where,
            )
        record = cls(body["site"], body["version"], body["digest"], body["time"], body["reason"], body["who"])
        try:
            zoned = record.signed_at.tzinfo is not None
        except ValueError:
            zoned = False
        if not zoned:
            raise ActivationError(
                f"the activation record's time {record.time!r} is not an ISO 8601 time with a zone",
                code="activation-unreadable",
                location=Location(file=source, path="time"),
            )
        return record


@dataclass(frozen=True)
class ActivationVerdict:
    """Whether the record on file authorizes (site, version, digest) now, and if not, why not."""

    allowed: bool
    code: str  # "activation-valid", else what is wrong (activation-missing, -site, -version, ...)
    message: str
    path: Path
    record: ActivationRecord | None = None
    sha256: str | None = None  # of the record's bytes: what the operator log cites

    def as_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "code": self.code,
            "message": self.message,
            "path": str(self.path),
            "sha256": self.sha256,
            "record": self.record.as_dict() if self.record else None,
        }

    def require(self) -> ActivationVerdict:
        """This verdict when it allows; else the ActivationError (exit 1) that says why not."""
        if not self.allowed:
            raise ActivationError(
                self.message,
                code=self.code,
                location=Location(file=str(self.path)),
                hint="sign a new one: aifactory activation authorize SITE --to VERSION --reason TEXT "
                "--key KEY --trust ALLOWED_SIGNERS (docs/operations.md, Rollback authorization)",
            )
        return self

    def citation(self) -> dict[str, Any]:
        """How an operator-log record cites the record that allowed a change ({} when none did)."""
        if not self.allowed or self.record is None:
            return {}
        return {
            "activation": {
                "file": str(self.path),
                "sha256": self.sha256,
                "who": self.record.who,
                "time": self.record.time,
                "reason": self.record.reason,
            }
        }


def record_path(state: SiteState, version: str) -> Path:
    if not _SAFE_VERSION.fullmatch(version):
        raise ActivationError(
            f"{version!r} is not a bundle version (dot-separated numbers)",
            code="activation-version",
            hint="give the version as `bundle current` or `bundle verify` shows it, e.g. 20261201.1",
        )
    return state.root.joinpath(*FOLDER, f"{version}.json")


def signature_path(path: Path) -> Path:
    return path.with_name(path.name + ".sig")


def authorize(
    state: SiteState,
    *,
    version: str,
    digest: str,
    reason: str,
    key: Ed25519PrivateKey,
    trust: Path,
    now: datetime | None = None,
) -> ActivationVerdict:
    """Sign and write the activation record for (state.site, version, digest); return its verdict.

    The key must be one `trust` grants for this namespace (checked first: a record nobody can verify
    is not written), and the record names that grant's principal as `who`."""
    _check_request(digest=digest, reason=reason)
    path = record_path(state, version)
    signers = AllowedSigners.read(trust)
    try:
        who = signers.find_principal(key.public_key(), namespace=NAMESPACE).principal
    except SignerUntrusted as exc:
        raise ActivationError(
            f"this key ({signing.fingerprint(key.public_key())}) is not trusted for activations: "
            f"{exc.message}",
            code="activation-signer",
            location=Location(file=str(trust)),
            hint=f'list the admin\'s key in the trust file with namespaces="{NAMESPACE}"',
        ) from None
    when = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    record = ActivationRecord(state.site, version, digest, _iso(when), reason, who)
    data = record.to_bytes()
    with state.lock("activation authorize"):
        atomic_write(signature_path(path), signing.sign(data, key, NAMESPACE).encode(), mode=0o600)
        atomic_write(path, data, mode=0o600)
        state.record(
            command="activation authorize",
            result="signed",
            bundle_digest=digest,
            detail={**record.as_dict(), "file": str(path), "sha256": sha256_bytes(data)},
        )
    return activation_allows(state, version=version, digest=digest, trust=trust, now=when)


def _check_request(*, digest: str, reason: str) -> None:
    if not _DIGEST.fullmatch(digest):
        raise ActivationError(
            f"{digest!r} is not a bundle digest (sha256:<64 hex>)",
            code="activation-digest",
            hint="take it from `aifactory bundle verify` (the manifest's digest)",
        )
    if not reason.strip() or len(reason) > MAX_REASON or any(ord(c) < 32 or ord(c) == 127 for c in reason):
        raise ActivationError(
            f"the reason must be one line of 1 to {MAX_REASON} printable characters",
            code="activation-reason",
            hint="say why the site goes back, e.g. the incident or ticket that calls for it",
        )


def activation_allows(
    state: SiteState,
    *,
    version: str,
    digest: str,
    trust: Path,
    now: datetime | None = None,
) -> ActivationVerdict:
    """Whether a valid activation record authorizes site `state.site` to go back to `version` (whose
    manifest digest is `digest`) at `now`. Never raises for a bad record: the verdict says what is wrong."""
    path = record_path(state, version)
    refused = _Refusal(path)
    if not path.is_file():
        return refused(
            "activation-missing",
            f"no activation record authorizes version {version} for site {state.site} (none at {path})",
        )
    data, armored = _read_pair(path)
    if data is None:
        return refused("activation-unreadable", f"the activation record {path} is unreadable or too large")
    if armored is None:
        return refused("activation-unsigned", f"the activation record {path} has no signature beside it")
    try:
        record = ActivationRecord.parse(data, source=str(path))
    except ActivationError as error:
        return refused("activation-tampered", f"{error.message} (was it altered?)")
    digest_of_record = sha256_bytes(data)
    try:
        signing.verify(data, armored, allowed_signers=trust, namespace=NAMESPACE, principal=record.who)
    except SignerUntrusted as exc:
        return refused(
            "activation-signer",
            f"the activation record {path} is signed by a key {trust} does not trust for activations "
            f"as '{record.who}': {exc.message}",
            record,
        )
    except SignatureError as exc:
        return refused(
            "activation-tampered", f"the activation record {path} does not verify: {exc.message}", record
        )
    mismatch = _mismatch(record, site=state.site, version=version, digest=digest)
    if mismatch is not None:
        return refused(*mismatch, record)
    aged = _age_problem(record, now=(now or datetime.now(UTC)).astimezone(UTC))
    if aged is not None:
        return refused(*aged, record)
    return ActivationVerdict(
        True,
        "activation-valid",
        f"version {version} authorized for site {state.site} by {record.who} at {record.time}: "
        f"{record.reason}",
        path,
        record,
        digest_of_record,
    )


@dataclass(frozen=True)
class _Refusal:
    path: Path

    def __call__(self, code: str, message: str, record: ActivationRecord | None = None) -> ActivationVerdict:
        return ActivationVerdict(False, code, message, self.path, record)


def _read_pair(path: Path) -> tuple[bytes | None, str | None]:
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            return None, None
        data = path.read_bytes()
    except OSError:
        return None, None
    try:
        armored = signature_path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return data, None
    return data, armored


def _mismatch(record: ActivationRecord, *, site: str, version: str, digest: str) -> tuple[str, str] | None:
    if record.site != site:
        return "activation-site", f"the activation record is for site {record.site!r}, not {site!r}"
    if record.version != version:
        return (
            "activation-version",
            f"the activation record authorizes version {record.version}, not {version}",
        )
    if record.digest != digest:
        return (
            "activation-digest",
            f"the activation record authorizes version {version} with digest {record.digest}; "
            f"this bundle is {digest} (another build of that version)",
        )
    return None


def _age_problem(record: ActivationRecord, *, now: datetime) -> tuple[str, str] | None:
    signed = record.signed_at.astimezone(UTC)
    if signed > now + CLOCK_SKEW:
        return (
            "activation-future",
            f"the activation record is dated {record.time}, later than now ({_iso(now)})",
        )
    if now - signed > MAX_AGE:
        hours = int(MAX_AGE.total_seconds() // 3600)
        return (
            "activation-expired",
            f"the activation record was signed at {record.time}, more than {hours} h before now "
            f"({_iso(now)})",
        )
    return None


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
