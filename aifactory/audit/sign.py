"""Signing a report folder: a SHA256SUMS manifest of the report files, signed as one file (SSHSIG,
namespace aifactory-audit), with the allowed_signers that trusts the key beside it.

    ssh-keygen -Y verify -f allowed_signers -I IDENTITY -n aifactory-audit -s SHA256SUMS.sig < SHA256SUMS
    sha256sum -c SHA256SUMS

The key is the site's audit key (generated on first use in <state>/audit/, mode 0600) unless one is given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aifactory import signing
from aifactory.digests import sha256_file
from aifactory.errors import AuditError, Location
from aifactory.state import SiteState

NAMESPACE = "aifactory-audit"
MANIFEST = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.sig"
ALLOWED_SIGNERS = "allowed_signers"
KEY_NAME = "audit_key"
PASSPHRASE_ENV = "AIFACTORY_AUDIT_KEY_PASSPHRASE"


@dataclass(frozen=True)
class SigningKey:
    key: Ed25519PrivateKey
    identity: str

    def describe(self) -> dict[str, str]:
        return {
            "identity": self.identity,
            "fingerprint": signing.fingerprint(self.key.public_key()),
            "namespace": NAMESPACE,
        }

    def allowed_signers_line(self) -> str:
        return allowed_signers_line(self.identity, signing.public_key_line(self.key.public_key()))


def allowed_signers_line(identity: str, public_key_line: str) -> str:
    return f'{identity} namespaces="{NAMESPACE}" {public_key_line}\n'


file_digest = sha256_file


def manifest_text(folder: Path, names: Sequence[str]) -> str:
    """`sha256sum` format: '<hex>  <name>' per line, names in the given order."""
    return "".join(f"{file_digest(folder / name)}  {name}\n" for name in names)


def parse_manifest(text: str, *, where: Path) -> list[tuple[str, str]]:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or "/" in name or name.startswith("."):
            raise AuditError(
                f"line {number} is not '<sha256>  <file name>'",
                location=Location(file=str(where), line=number),
            )
        entries.append((digest, name))
    return entries


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def site_audit_key(state: SiteState) -> SigningKey:
    """The site's own audit key, generated on first use (0600 in <state>/audit/)."""
    folder = state.subdir("audit")
    identity = f"audit@{state.site}"
    if not (folder / KEY_NAME).exists():
        signing.generate_keypair(
            folder, identity=identity, name=KEY_NAME, namespaces=NAMESPACE, passphrase=_passphrase()
        )
    return SigningKey(signing.load_private_key(folder / KEY_NAME, _passphrase()), identity)


def given_key(path: Path, identity: str | None) -> SigningKey:
    """A key the operator gives with --key; its identity from --identity, else its .pub comment."""
    key = signing.load_private_key(path, _passphrase())
    if identity is None:
        public = path.with_name(path.name + ".pub")
        fields = public.read_text().split() if public.exists() else []
        identity = fields[2] if len(fields) > 2 else "audit"
    return SigningKey(key, identity)


def sign_folder(folder: Path, names: Sequence[str], key: SigningKey) -> None:
    """Write SHA256SUMS over `names`, its signature and the allowed_signers that trusts the key."""
    manifest = manifest_text(folder, names)
    (folder / MANIFEST).write_text(manifest)
    (folder / SIGNATURE).write_text(signing.sign(manifest.encode(), key.key, NAMESPACE))
    (folder / ALLOWED_SIGNERS).write_text(key.allowed_signers_line())
