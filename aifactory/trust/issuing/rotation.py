"""Rotating the site's token key, its CA, its server certificates, its bundle-signing key and the
hosts' SSH host keys, with an overlap (SC-12, IA-5).

    aifactory rotate SITE --what bundle-key|token-key|ca|server-certs|ssh-host-keys [--finish]

bundle-key and ssh-host-keys: see `_rotate_bundle_key` and `_rotate_host_keys` below (their keys live
outside the runtime folder: `Targets` names where).

A rotation is a record in the state folder, `runtime/rotations/<what>.json` (0600), that names its
phase; every step below is safe to run twice, so a rotation killed midway is resumed by running the
same command again. Each phase ends with a rollout: the deploy path, one host at a time (`Rollout`),
and the hosts done are in the record so a resumed rollout skips them.

token-key (the tenant-token signing key, Ed25519, generated here at 0600 and never logged):

    staged          the new key in token-key/next/; allowed_signers trusts the old and the new key
    trust-rollout   every host is given that allowed_signers (tokens are still signed with the old key,
                    which every host trusts at every instant)
    switch-rollout  the new key signs: new tokens and the revocation list; every host is given the
                    re-signed list (valid under both keys)
    overlap         both keys verify; tokens signed by the old one keep working until --finish
    finish-rollout  (--finish) allowed_signers trusts the new key alone; every host is given it
    finished        tokens signed by the old key are refused everywhere

The revocation list is signed with a key every host trusts before and after each rollout: a host that
is given a list signed by a key it does not trust yet refuses every token (fail closed) for that instant.

ca (the site CA, ECDSA P-256):

    staged          a new CA in site-ca/next/; ca.pem, the trust bundle, holds the old and the new CA
    trust-rollout   every host is given the bundle (client certificates from either CA verify)
    switch-rollout  the new CA's key issues; every server certificate (server-certs/, front-door-certs/,
                    monitoring-certs/) is reissued from it with the same names; hosts are given them
    overlap         client certificates from both CAs are accepted; tenants get new ones meanwhile
    finish-rollout  (--finish) the bundle holds the new CA alone; every host is given it
    finished        client certificates from the old CA are refused

server-certs: every serving host's certificate (server-certs/) reissued from the current CA with the
same names (the front door's name and address included), then a rollout. No overlap: both the old and
the new certificate chain to the CA that clients already trust.

Why --finish rather than an expiry in the record: the end of an overlap is the moment the old
credentials stop working, and the admin knows when the tenants have their new tokens and
certificates; an expiry would end it whether or not they had, and it would take effect only at the next
deploy anyway (hosts learn what they trust from a rollout, not from a clock on the control host).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aifactory.durable import atomic_write
from aifactory.errors import Location, RotationError
from aifactory.signing import (
    BUNDLE_NAMESPACE,
    fingerprint,
    generate_keypair,
    load_private_key,
    public_key_line,
)
from aifactory.trust.certs import SiteCA
from aifactory.trust.issuing import known_hosts
from aifactory.trust.issuing.certs import DNS_NAME, DNS_NAME_MAX, create_ca, issuing_certificate, reissue_like
from aifactory.trust.issuing.known_hosts import key_fingerprint
from aifactory.trust.issuing.tokens import resign_revocations
from aifactory.trust.tokens import TOKEN_NAMESPACE, TrustFiles, token_signer

SCHEMA = "aifactory.rotation/v1"
ROTATIONS = "rotations"
What = Literal["bundle-key", "token-key", "ca", "server-certs", "ssh-host-keys"]
WHATS: tuple[What, ...] = ("bundle-key", "token-key", "ca", "server-certs", "ssh-host-keys")
Phase = Literal[
    "staged", "trust-rollout", "switch-rollout", "overlap", "finish-rollout", "rollout", "finished"
]
# The folders (under the runtime folder) whose certificates a CA rotation reissues, and the one that
# server-certs reissues; ca.pem in each is a copy of the trust bundle.
SERVER_CERTS = "server-certs"
CERT_FOLDERS = (SERVER_CERTS, "front-door-certs", "monitoring-certs")
_KEY_LINE = re.compile(r"ssh-ed25519 [A-Za-z0-9+/]+={0,2}")
_SSH_FINGERPRINT = r"SHA256:[A-Za-z0-9+/]{43}"
_CERT_FINGERPRINT = r"[0-9a-f]{64}"
_TIME = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z"


class RotationRecord(BaseModel):
    """One rotation as the state folder keeps it: what, which phase, the old and new key (public halves
    and fingerprints only, never a private key), who started it and which hosts have the phase's files."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    schema_: Literal["aifactory.rotation/v1"] = Field(alias="schema")
    id: str = Field(pattern=r"^[0-9a-f]{32}$")
    site: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    what: What
    phase: Phase
    started: str = Field(pattern=f"^{_TIME}$")
    started_by: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")
    finished: str | None = Field(default=None, pattern=f"^{_TIME}$")
    old: str | None = Field(default=None, pattern=f"^({_SSH_FINGERPRINT}|{_CERT_FINGERPRINT})$")
    new: str | None = Field(default=None, pattern=f"^({_SSH_FINGERPRINT}|{_CERT_FINGERPRINT})$")
    old_key: str | None = Field(default=None, max_length=200, pattern=f"^{_KEY_LINE.pattern}$")
    new_key: str | None = Field(default=None, max_length=200, pattern=f"^{_KEY_LINE.pattern}$")
    hosts_done: tuple[str, ...] = ()
    # ssh-host-keys: each host's new public key as the host returned it (host -> key line)
    host_keys: dict[str, str] = Field(default_factory=dict)

    def moved(self, phase: Phase, **changes: object) -> RotationRecord:
        return self.model_copy(update={"phase": phase, "hosts_done": (), **changes})

    def as_json(self) -> bytes:
        return (json.dumps(self.model_dump(by_alias=True), indent=2, sort_keys=True) + "\n").encode()


class Rollout(Protocol):
    """The deploy path as a rotation uses it: the hosts, in order, and deploying one of them (raises an
    AifactoryError when it fails). The CLI's is `aifactory deploy --limit HOST` per host."""

    def hosts(self) -> Sequence[str]: ...

    def deploy(self, host: str) -> None: ...


class HostKeySource(Protocol):
    """The hosts' side of an ssh-host-keys rotation: the names a host is known by in known_hosts, and
    its new host key, generated on the host (the private half never leaves it) and returned over the
    deploy's authenticated SSH connection; asking again returns the same staged key."""

    def names(self, host: str) -> Sequence[str]: ...

    def stage(self, host: str) -> str: ...


@dataclass(frozen=True)
class Targets:
    """Where the keys that are not in the runtime folder live: the site's bundle-signing key folder
    (signing_key, signing_key.pub, allowed_signers: what `up`, `bundle verify/import` and `upgrade`
    trust) for bundle-key; the known_hosts file the deploy checks hosts with, and the hosts' side,
    for ssh-host-keys."""

    bundle_key: Path | None = None
    known_hosts: Path | None = None
    host_keys: HostKeySource | None = None


Report = Callable[[str], None]  # a line for the admin (the CLI prints it)


def record_path(trust: TrustFiles, what: What) -> Path:
    return trust.root / ROTATIONS / f"{what}.json"


def load_record(trust: TrustFiles, what: What) -> RotationRecord | None:
    """The rotation of `what` on record, or None; a damaged or hostile record is refused, naming the
    file and the field, so a half-done rotation is never resumed from a guess."""
    path = record_path(trust, what)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        record = RotationRecord.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        raise RotationError(
            f"the rotation record is not valid: {first['msg']}",
            code="rotation-record-invalid",
            location=Location(file=str(path), path=field),
            hint="it is not what `aifactory rotate` writes; restore it from a backup, or move it away "
            "and check the trust files by hand before rotating again",
        ) from None
    if record.what != what:
        raise RotationError(
            f"the record describes a {record.what} rotation, not {what}",
            code="rotation-record-invalid",
            location=Location(file=str(path), path="what"),
        )
    for host, key in record.host_keys.items():
        if not known_hosts.HOST_KEY_LINE.fullmatch(key):
            raise RotationError(
                f"the new host key of {host[:60]!r} is not one ssh-ed25519 public key",
                code="rotation-record-invalid",
                location=Location(file=str(path), path=f"host_keys.{host[:60]}"),
            )
    for host in (*record.hosts_done, *record.host_keys):
        if len(host) > DNS_NAME_MAX or not DNS_NAME.fullmatch(host):
            raise RotationError(
                f"{host[:60]!r} is not a host name",
                code="rotation-record-invalid",
                location=Location(file=str(path), path="hosts_done"),
            )
    return record


def save_record(trust: TrustFiles, record: RotationRecord) -> None:
    atomic_write(record_path(trust, record.what), record.as_json(), mode=0o600)


def rotate(
    trust: TrustFiles,
    *,
    site: str,
    what: What,
    rollout: Rollout,
    targets: Targets = Targets(),
    finish: bool = False,
    user: str = "unknown",
    report: Report = lambda line: None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RotationRecord:
    """Start, resume or finish the rotation of `what` (see the module docstring); return its record."""
    record = load_record(trust, what)
    if record is not None and record.site != site:
        raise RotationError(
            f"the rotation record is for site {record.site!r}, not {site!r}",
            code="rotation-record-invalid",
            location=Location(file=str(record_path(trust, what)), path="site"),
        )
    if record is not None and record.phase != "finished":
        report(f"resuming the {what} rotation {record.id} in phase {record.phase}")
    if what == "bundle-key":
        return _rotate_bundle_key(
            trust,
            record,
            site=site,
            rollout=rollout,
            targets=targets,
            finish=finish,
            user=user,
            report=report,
            now=now,
        )
    if what == "ssh-host-keys":
        return _rotate_host_keys(
            trust,
            record,
            site=site,
            rollout=rollout,
            targets=targets,
            finish=finish,
            user=user,
            report=report,
            now=now,
        )
    if finish:
        return _finish(trust, record, what=what, rollout=rollout, report=report, now=now)
    if record is None or record.phase == "finished":
        record = _start(trust, site=site, what=what, user=user, now=now)
        report(f"started the {what} rotation {record.id}: {record.old} -> {record.new}")
    steps = {"token-key": _token_key_steps, "ca": _ca_steps, "server-certs": _server_cert_steps}[what]
    return steps(trust, record, rollout=rollout, report=report, now=now)


def _start(
    trust: TrustFiles, *, site: str, what: What, user: str, now: Callable[[], datetime]
) -> RotationRecord:
    fields: dict[str, object] = {}
    _require_current(trust, what)
    if what == "token-key":
        public = load_private_key(trust.private_key).public_key()
        fields = {"old": fingerprint(public), "old_key": public_key_line(public)}
    elif what == "ca":
        fields = {"old": _ca_fingerprint(issuing_certificate(SiteCA.of(trust)))}
    record = _new_record(
        site=site,
        what=what,
        user=user,
        now=now,
        phase="staged" if what != "server-certs" else "rollout",
        **fields,
    )
    _stage(trust, record)
    if what == "token-key":
        public = load_private_key(_next_token_key(trust) / "signing_key").public_key()
        record = record.model_copy(update={"new": fingerprint(public), "new_key": public_key_line(public)})
    elif what == "ca":
        next_ca = _next_ca(trust)
        record = record.model_copy(update={"new": _ca_fingerprint(issuing_certificate(next_ca))})
    save_record(trust, record)
    return record


def _new_record(
    *, site: str, what: What, user: str, now: Callable[[], datetime], phase: Phase, **fields: object
) -> RotationRecord:
    return RotationRecord.model_validate(
        {
            "schema": SCHEMA,
            "id": uuid.uuid4().hex,
            "site": site,
            "what": what,
            "phase": phase,
            "started": _iso(now()),
            "started_by": _safe_user(user),
            **fields,
        }
    )


def _require_current(trust: TrustFiles, what: What) -> None:
    """A rotation replaces something: the site must have it already (deploy makes both)."""
    ca = SiteCA.of(trust)
    missing = {
        "token-key": [trust.private_key],
        "ca": [ca.key, ca.certificate],
        "server-certs": [ca.key, ca.certificate],
    }.get(what, [])
    for path in missing:
        if not path.is_file():
            raise RotationError(
                f"there is nothing to rotate: {path} does not exist",
                code="rotation-nothing-to-rotate",
                location=Location(file=str(path)),
                hint="deploy the site (or issue a token or certificate) first: that makes the site's keys",
            )


def _stage(trust: TrustFiles, record: RotationRecord) -> None:
    """The new key or CA, generated beside the current one (a leftover from a rotation killed before its
    record was written is replaced: it was never trusted anywhere)."""
    if record.what == "token-key":
        folder = _next_token_key(trust)
        shutil.rmtree(folder, ignore_errors=True)
        generate_keypair(folder, identity=token_signer(record.site), namespaces=TOKEN_NAMESPACE)
    elif record.what == "ca":
        next_ca = _next_ca(trust)
        shutil.rmtree(next_ca.root, ignore_errors=True)
        create_ca(next_ca, site=record.site, successor=True)


# ------------------------------------------------------------------ token-key


def _token_key_steps(
    trust: TrustFiles,
    record: RotationRecord,
    *,
    rollout: Rollout,
    report: Report,
    now: Callable[[], datetime],
) -> RotationRecord:
    if record.phase == "staged":
        _write_token_trust(trust, record, (record.old_key, record.new_key))
        record = _save(trust, record.moved("trust-rollout"))
    if record.phase == "trust-rollout":
        record = _roll_out(trust, record, rollout, report, "hosts trust the old and the new token key")
        record = _save(trust, record.moved("switch-rollout"))
    if record.phase == "switch-rollout":
        if not record.hosts_done:  # a resumed rollout keeps the list it is rolling out
            _switch_token_key(trust, record)
        record = _roll_out(trust, record, rollout, report, "hosts have the list signed by the new key")
        record = _save(trust, record.moved("overlap"))
    if record.phase == "overlap":
        report(
            f"the {record.what} rotation {record.id} is in its overlap: tokens signed by the old key "
            f"({record.old}) and the new one ({record.new}) are accepted; new tokens are signed with the "
            f"new key. Issue tenants new tokens, then end it: aifactory rotate {record.site} --what "
            f"{record.what} --finish"
        )
    return record


def _write_token_trust(trust: TrustFiles, record: RotationRecord, keys: tuple[str | None, ...]) -> None:
    identity = token_signer(record.site)
    lines = [f'{identity} namespaces="{TOKEN_NAMESPACE}" {key}\n' for key in keys if key]
    if not lines:
        raise RotationError("the rotation record names no token key", code="rotation-record-invalid")
    atomic_write(trust.allowed_signers, "".join(lines).encode())


def _switch_token_key(trust: TrustFiles, record: RotationRecord) -> None:
    """The staged key becomes the signing key (the old private key is overwritten: nothing needs it
    once every host trusts the new one), and the revocation list is re-signed with it."""
    staged = _next_token_key(trust)
    if (staged / "signing_key").exists():
        public = load_private_key(staged / "signing_key").public_key()
        if fingerprint(public) != record.new:
            raise RotationError(
                f"the staged key in {staged} is not the one the rotation record names ({record.new})",
                code="rotation-record-invalid",
                location=Location(file=str(staged / "signing_key")),
            )
        os.replace(staged / "signing_key.pub", trust.key_dir / "signing_key.pub")
        os.replace(staged / "signing_key", trust.private_key)
        shutil.rmtree(staged)
    current = fingerprint(load_private_key(trust.private_key).public_key())
    if current != record.new:
        raise RotationError(
            f"the token key {trust.private_key} is {current}, not the new key {record.new}",
            code="rotation-record-invalid",
            location=Location(file=str(trust.private_key)),
        )
    resign_revocations(trust, site=record.site)


def _next_token_key(trust: TrustFiles) -> Path:
    """The folder of the staged token key (signing_key, signing_key.pub, 0600/0644)."""
    return trust.key_dir / "next"


# ------------------------------------------------------------------ ca


def _ca_steps(
    trust: TrustFiles,
    record: RotationRecord,
    *,
    rollout: Rollout,
    report: Report,
    now: Callable[[], datetime],
) -> RotationRecord:
    ca = SiteCA.of(trust)
    if record.phase == "staged":
        next_ca = _next_ca(trust)
        bundle = (
            _bundle_without(ca.certificate.read_bytes(), keep=(record.old,))
            + next_ca.certificate.read_bytes()
        )
        _write_bundle(trust, bundle)
        record = _save(trust, record.moved("trust-rollout"))
    if record.phase == "trust-rollout":
        record = _roll_out(trust, record, rollout, report, "hosts trust client certificates from both CAs")
        record = _save(trust, record.moved("switch-rollout"))
    if record.phase == "switch-rollout":
        _switch_ca(trust, record)  # on a resume it reissues only what the old CA still holds
        record = _roll_out(trust, record, rollout, report, "hosts serve certificates from the new CA")
        record = _save(trust, record.moved("overlap"))
    if record.phase == "overlap":
        report(
            f"the ca rotation {record.id} is in its overlap: client certificates from the old CA "
            f"({record.old}) and the new one ({record.new}) are accepted; give clients the bundle "
            f"{ca.certificate} and tenants new certificates (aifactory token cert), then end it: "
            f"aifactory rotate {record.site} --what ca --finish"
        )
    return record


def _switch_ca(trust: TrustFiles, record: RotationRecord) -> None:
    """The staged CA's key becomes the issuing key, then every certificate is reissued from it (a
    resumed run reissues only those still from the old CA)."""
    ca, staged = SiteCA.of(trust), _next_ca(trust)
    if staged.key.exists():
        if _ca_fingerprint(issuing_certificate(staged)) != record.new:
            raise RotationError(
                f"the staged CA in {staged.root} is not the one the rotation record names ({record.new})",
                code="rotation-record-invalid",
                location=Location(file=str(staged.certificate)),
            )
        os.replace(staged.key, ca.key)
        shutil.rmtree(staged.root)
    current = _ca_fingerprint(issuing_certificate(ca))
    if current != record.new:
        raise RotationError(
            f"the site CA's key issues for {current}, not the new CA {record.new}",
            code="rotation-record-invalid",
            location=Location(file=str(ca.key)),
        )
    reissue_all(trust, site=record.site, folders=CERT_FOLDERS, unless_from=record.new)


def reissue_all(
    trust: TrustFiles, *, site: str, folders: Sequence[str], unless_from: str | None = None
) -> list[str]:
    """Reissue every certificate in `folders` from the current CA with the same names; with
    `unless_from`, skip those that CA (its fingerprint) already issued. Returns the subjects reissued."""
    ca_certificate = issuing_certificate(SiteCA.of(trust))
    done: list[str] = []
    for name in folders:
        folder = trust.root / name
        if not folder.is_dir():
            continue
        for pem in sorted(folder.glob("*.pem")):
            if pem.name == "ca.pem" or not pem.with_suffix(".key").is_file():
                continue
            if unless_from is not None and _issued_by(pem, ca_certificate):
                continue
            reissue_like(trust, site=site, folder=folder, subject=pem.stem)
            done.append(f"{name}/{pem.stem}")
        _copy_bundle(trust, folder)
    return done


def _issued_by(pem: Path, ca_certificate: x509.Certificate) -> bool:
    certificate = x509.load_pem_x509_certificate(pem.read_bytes())
    return certificate.issuer == ca_certificate.subject and _verifies(certificate, ca_certificate)


def _verifies(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _write_bundle(trust: TrustFiles, bundle: bytes) -> None:
    atomic_write(SiteCA.of(trust).certificate, bundle)
    for name in CERT_FOLDERS:
        _copy_bundle(trust, trust.root / name)


def _copy_bundle(trust: TrustFiles, folder: Path) -> None:
    """Each certificate folder's ca.pem (what HAProxy and Prometheus verify the nodes with) follows the
    site's bundle."""
    if (folder / "ca.pem").is_file():
        atomic_write(folder / "ca.pem", SiteCA.of(trust).certificate.read_bytes())


def _bundle_without(bundle: bytes, *, keep: Sequence[str | None]) -> bytes:
    """The bundle's certificates whose fingerprints are in `keep`, in order, as PEM."""
    kept = [c for c in x509.load_pem_x509_certificates(bundle) if _ca_fingerprint(c) in keep]
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in kept)


def _next_ca(trust: TrustFiles) -> SiteCA:
    return SiteCA(SiteCA.of(trust).root / "next")


def _ca_fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


# ------------------------------------------------------------------ server-certs


def _server_cert_steps(
    trust: TrustFiles,
    record: RotationRecord,
    *,
    rollout: Rollout,
    report: Report,
    now: Callable[[], datetime],
) -> RotationRecord:
    if record.phase == "rollout":
        if not record.hosts_done:  # a resumed rollout keeps the certificates it is rolling out
            reissued = reissue_all(trust, site=record.site, folders=(SERVER_CERTS,), unless_from=None)
            report(f"reissued {len(reissued)} server certificate(s) from the site CA: {', '.join(reissued)}")
        record = _roll_out(trust, record, rollout, report, "hosts serve their new certificates")
        record = _save(trust, record.moved("finished", finished=_iso(now())))
    return record


# ------------------------------------------------------------------ bundle-key

BUNDLE_KEY = "signing_key"


def _rotate_bundle_key(
    trust: TrustFiles,
    record: RotationRecord | None,
    *,
    site: str,
    rollout: Rollout,
    targets: Targets,
    finish: bool,
    user: str,
    report: Report,
    now: Callable[[], datetime],
) -> RotationRecord:
    """staged (new key in bundle-key/next/, allowed_signers names both) -> trust-rollout (every host's
    bundle trust file names both) -> the new key signs -> overlap -> --finish: allowed_signers names
    the new key alone, every host is given it; a bundle signed only by the old key is refused."""
    folder = _bundle_key_folder(targets)
    if finish:
        return _finish(
            trust,
            record,
            what="bundle-key",
            rollout=rollout,
            report=report,
            now=now,
            narrow=lambda done: _write_bundle_trust(folder, (done.new_key,)),
        )
    if record is None or record.phase == "finished":
        record = _save(trust, _start_bundle_key(folder, site=site, user=user, now=now))
        report(f"started the bundle-key rotation {record.id}: {record.old} -> {record.new}")
    if record.phase == "staged":
        _write_bundle_trust(folder, (record.old_key, record.new_key))
        record = _save(trust, record.moved("trust-rollout"))
    if record.phase == "trust-rollout":
        record = _roll_out(trust, record, rollout, report, "hosts trust bundles signed by either key")
        _switch_bundle_key(folder, record)
        record = _save(trust, record.moved("overlap"))
    if record.phase == "overlap":
        report(
            f"the bundle-key rotation {record.id} is in its overlap: bundles signed by the old key "
            f"({record.old}) and the new one ({record.new}) verify; {folder / BUNDLE_KEY} is the new "
            f"key. Build and import a bundle signed with it, then end it: aifactory rotate {record.site} "
            "--what bundle-key --finish"
        )
    return record


def _bundle_key_folder(targets: Targets) -> Path:
    folder = targets.bundle_key
    if folder is None or not (folder / f"{BUNDLE_KEY}.pub").is_file():
        raise RotationError(
            f"there is nothing to rotate: the site has no bundle-signing key ({folder})",
            code="rotation-nothing-to-rotate",
            location=Location(file=str(folder)) if folder is not None else None,
            hint="`aifactory up` makes it (<state>/bundle-key/); rotate it once it signs the site's bundles",
        )
    return folder


def _bundle_public(path: Path) -> tuple[str, str]:
    """The key line and the identity (its comment) of a .pub file that generate_keypair wrote."""
    try:
        fields = path.read_text().split()
    except (OSError, UnicodeDecodeError) as exc:
        raise RotationError(
            f"cannot read the bundle key {path}: {exc}", code="rotation-nothing-to-rotate"
        ) from None
    line = " ".join(fields[:2])
    identity = fields[2] if len(fields) == 3 else ""
    if not _KEY_LINE.fullmatch(line) or not re.fullmatch(r"[A-Za-z0-9._@-]{1,253}", identity):
        raise RotationError(
            f"{path} is not an Ed25519 public key with its signer identity",
            code="rotation-record-invalid",
            location=Location(file=str(path)),
            hint="it is not what `aifactory bundle keygen` or `aifactory up` writes",
        )
    return line, identity


def _start_bundle_key(folder: Path, *, site: str, user: str, now: Callable[[], datetime]) -> RotationRecord:
    old_key, identity = _bundle_public(folder / f"{BUNDLE_KEY}.pub")
    staged = folder / "next"
    shutil.rmtree(staged, ignore_errors=True)  # a leftover was never trusted anywhere
    generate_keypair(staged, identity=identity, namespaces=BUNDLE_NAMESPACE)
    new_key, _ = _bundle_public(staged / f"{BUNDLE_KEY}.pub")
    return _new_record(
        site=site,
        what="bundle-key",
        user=user,
        now=now,
        phase="staged",
        old=key_fingerprint(old_key),
        old_key=old_key,
        new=key_fingerprint(new_key),
        new_key=new_key,
    )


def _write_bundle_trust(folder: Path, keys: tuple[str | None, ...]) -> None:
    _, identity = _bundle_public(folder / f"{BUNDLE_KEY}.pub")
    lines = [f'{identity} namespaces="{BUNDLE_NAMESPACE}" {key}\n' for key in keys if key]
    if not lines:
        raise RotationError("the rotation record names no bundle key", code="rotation-record-invalid")
    atomic_write(folder / "allowed_signers", "".join(lines).encode(), mode=0o644)


def _switch_bundle_key(folder: Path, record: RotationRecord) -> None:
    """The staged key becomes the site's bundle-signing key (the old private key is overwritten:
    bundles it signed still verify during the overlap by its public half in allowed_signers)."""
    staged = folder / "next"
    if (staged / BUNDLE_KEY).exists():
        line, _ = _bundle_public(staged / f"{BUNDLE_KEY}.pub")
        if key_fingerprint(line) != record.new:
            raise RotationError(
                f"the staged key in {staged} is not the one the rotation record names ({record.new})",
                code="rotation-record-invalid",
                location=Location(file=str(staged / BUNDLE_KEY)),
            )
        os.replace(staged / f"{BUNDLE_KEY}.pub", folder / f"{BUNDLE_KEY}.pub")
        os.replace(staged / BUNDLE_KEY, folder / BUNDLE_KEY)
        shutil.rmtree(staged)
    current, _ = _bundle_public(folder / f"{BUNDLE_KEY}.pub")
    if key_fingerprint(current) != record.new:
        raise RotationError(
            f"the bundle key {folder / BUNDLE_KEY} is {key_fingerprint(current)}, "
            f"not the new key {record.new}",
            code="rotation-record-invalid",
            location=Location(file=str(folder / BUNDLE_KEY)),
        )


# ------------------------------------------------------------------ ssh-host-keys


def _rotate_host_keys(
    trust: TrustFiles,
    record: RotationRecord | None,
    *,
    site: str,
    rollout: Rollout,
    targets: Targets,
    finish: bool,
    user: str,
    report: Report,
    now: Callable[[], datetime],
) -> RotationRecord:
    """trust-rollout (each host generates its new key and returns the public half over the deploy's
    authenticated connection; known_hosts gets it beside the old one) -> switch-rollout (the deploy
    installs it, host by host) -> overlap -> --finish: known_hosts keeps the new keys alone, and a
    rollout proves every host is reached with them."""
    known, source = _host_key_targets(targets)
    if finish:
        return _finish(
            trust,
            record,
            what="ssh-host-keys",
            rollout=rollout,
            report=report,
            now=now,
            narrow=lambda done: _keep_new_host_keys(known, source, done, report),
        )
    if record is None or record.phase == "finished":
        new = _new_record(site=site, what="ssh-host-keys", user=user, now=now, phase="trust-rollout")
        record = _save(trust, new)
        report(f"started the ssh-host-keys rotation {record.id}: each host generates its new host key")
    if record.phase == "trust-rollout":
        record = _learn_host_keys(trust, record, rollout, known, source, report)
        record = _save(trust, record.moved("switch-rollout"))
    if record.phase == "switch-rollout":
        record = _roll_out(trust, record, rollout, report, "hosts present their new host keys")
        record = _save(trust, record.moved("overlap"))
    if record.phase == "overlap":
        report(
            f"the ssh-host-keys rotation {record.id} is in its overlap: {known} trusts each host's old and "
            f"new key; give other clients the new keys, then end it: aifactory rotate {record.site} "
            "--what ssh-host-keys --finish"
        )
    return record


def _host_key_targets(targets: Targets) -> tuple[Path, HostKeySource]:
    if targets.known_hosts is None or targets.host_keys is None:
        raise RotationError(
            "an ssh-host-keys rotation needs the known_hosts file the deploy checks hosts with",
            code="rotation-known-hosts",
            hint="give it: aifactory rotate SITE --what ssh-host-keys --known-hosts FILE",
        )
    return targets.known_hosts, targets.host_keys


def _learn_host_keys(
    trust: TrustFiles,
    record: RotationRecord,
    rollout: Rollout,
    known: Path,
    source: HostKeySource,
    report: Report,
) -> RotationRecord:
    """Each host's staged key, learned over the connection its current key authenticates (never from
    the network alone), added to known_hosts beside that key, one host at a time."""
    for host in rollout.hosts():
        if host in record.hosts_done:
            continue
        names = source.names(host)
        key = known_hosts.check_key(source.stage(host).strip(), host=host)
        trusted = known_hosts.host_keys(known_hosts.read(known), names)
        if key in trusted and record.host_keys.get(host) != key:
            raise RotationError(
                f"{host} returned a host key that {known} already trusts: it is not a new key",
                code="rotation-host-key",
                location=Location(file=str(known)),
                hint="check the host's staged key (it must be freshly generated), then run the command again",
            )
        known_hosts.add_key(known, host=host, names=names, key=key, rotation=record.id)
        update = {"hosts_done": (*record.hosts_done, host), "host_keys": {**record.host_keys, host: key}}
        record = _save(trust, record.model_copy(update=update))
        report(f"ssh-host-keys rotation: learned {host}'s new host key {key_fingerprint(key)}")
    return record


def _keep_new_host_keys(known: Path, source: HostKeySource, record: RotationRecord, report: Report) -> None:
    keep = {host: (source.names(host), key) for host, key in record.host_keys.items()}
    changed = known_hosts.keep_only(known, keep)
    report(
        f"ssh-host-keys rotation: {known} trusts only the new keys of {len(keep)} host(s) "
        f"({len(changed)} changed)"
    )


# ------------------------------------------------------------------ finish


def _finish(
    trust: TrustFiles,
    record: RotationRecord | None,
    *,
    what: What,
    rollout: Rollout,
    report: Report,
    now: Callable[[], datetime],
    narrow: Callable[[RotationRecord], None] | None = None,
) -> RotationRecord:
    """End the overlap: `narrow` (by default the token key's or the CA's) makes the control host's trust
    files name the new key alone, then every host is given them."""
    if what == "server-certs":
        raise RotationError("a server-certs rotation has no overlap to finish", code="rotation-phase")
    if record is None or record.phase == "finished":
        raise RotationError(
            f"no {what} rotation is under way",
            code="rotation-phase",
            hint=f"start one: aifactory rotate SITE --what {what}",
        )
    if record.phase not in ("overlap", "finish-rollout"):
        raise RotationError(
            f"the {what} rotation {record.id} is in phase {record.phase}, before its overlap",
            code="rotation-phase",
            hint=f"run `aifactory rotate SITE --what {what}` (without --finish) to complete it first",
        )
    if record.phase == "overlap":
        if narrow is not None:
            narrow(record)
        elif what == "token-key":
            _write_token_trust(trust, record, (record.new_key,))
        else:
            _write_bundle(
                trust, _bundle_without(SiteCA.of(trust).certificate.read_bytes(), keep=(record.new,))
            )
        record = _save(trust, record.moved("finish-rollout"))
    record = _roll_out(trust, record, rollout, report, f"hosts trust the new {what} alone")
    record = _save(trust, record.moved("finished", finished=_iso(now())))
    report(f"the {what} rotation {record.id} is finished: credentials from {record.old} are refused")
    return record


# ------------------------------------------------------------------ shared


def _roll_out(
    trust: TrustFiles, record: RotationRecord, rollout: Rollout, report: Report, goal: str
) -> RotationRecord:
    """Deploy one host at a time, saving each host done, so a resumed rollout skips them."""
    hosts = list(rollout.hosts())
    for host in hosts:
        if host in record.hosts_done:
            continue
        report(f"{record.what} rotation, phase {record.phase}: deploying {host}")
        rollout.deploy(host)
        record = _save(trust, record.model_copy(update={"hosts_done": (*record.hosts_done, host)}))
    report(f"{record.what} rotation, phase {record.phase}: {len(hosts)} host(s) done; {goal}")
    return record


def _save(trust: TrustFiles, record: RotationRecord) -> RotationRecord:
    save_record(trust, record)
    return record


def _safe_user(user: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._@-]", "_", user)[:64]
    return cleaned or "unknown"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
