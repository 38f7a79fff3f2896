"""Ed25519 keys and detached signatures in OpenSSH's SSHSIG format.

Signatures made here verify with the stock tool, on a machine without aifactory:

    ssh-keygen -Y verify -f allowed_signers -I <identity> -n <namespace> -s FILE.sig < FILE

Shared by the bundle (namespace `aifactory-bundle`), the audit report (`aifactory-audit`) and the
runtime's signed log heads (`aifactory-log`). Private keys are written in OpenSSH format with mode 0600,
encrypted when a passphrase is given, and never printed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Required, TypedDict, Unpack

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from aifactory.allowed_signers import AllowedSigners, SignerMatch
from aifactory.errors import AifactoryError, Location, SignatureError, SignerUntrusted

# The namespace bundles are signed in: here, not in aifactory.bundle, because trust code (the
# bundle-key rotation) names it too and must not import a control host stage.
BUNDLE_NAMESPACE = "aifactory-bundle"

__all__ = [
    "AllowedSigners",
    "SignatureError",
    "SignerMatch",
    "SignerUntrusted",
    "fingerprint",
    "generate_keypair",
    "load_private_key",
    "parse_signature",
    "public_key_blob",
    "public_key_line",
    "sign",
    "sign_digest",
    "ssh_keygen_verify",
    "verify",
    "verify_digest",
    "verify_signer",
]

MAGIC = b"SSHSIG"
HASH_ALGORITHM = "sha512"
KEY_TYPE = "ssh-ed25519"
BEGIN = "-----BEGIN SSH SIGNATURE-----"
END = "-----END SSH SIGNATURE-----"


def _string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _read_string(blob: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(blob):
        raise SignatureError("the signature is truncated")
    (length,) = struct.unpack_from(">I", blob, offset)
    end = offset + 4 + length
    if end > len(blob):
        raise SignatureError("the signature is truncated")
    return blob[offset + 4 : end], end


def public_key_blob(public: Ed25519PublicKey) -> bytes:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _string(KEY_TYPE.encode()) + _string(raw)


def public_key_line(public: Ed25519PublicKey) -> str:
    """`ssh-ed25519 AAAA...` as in an authorized_keys or allowed_signers file."""
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def fingerprint(public: Ed25519PublicKey) -> str:
    digest = hashlib.sha256(public_key_blob(public)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _signed_data(message_digest: bytes, namespace: str) -> bytes:
    return (
        MAGIC
        + _string(namespace.encode())
        + _string(b"")
        + _string(HASH_ALGORITHM.encode())
        + _string(message_digest)
    )


def sign(data: bytes, key: Ed25519PrivateKey, namespace: str) -> str:
    """An armored SSHSIG signature over `data`."""
    return sign_digest(hashlib.sha512(data).digest(), key, namespace)


def sign_digest(message_digest: bytes, key: Ed25519PrivateKey, namespace: str) -> str:
    """Sign a SHA-512 digest (for large files hashed while streaming)."""
    raw_signature = key.sign(_signed_data(message_digest, namespace))
    blob = (
        MAGIC
        + struct.pack(">I", 1)
        + _string(public_key_blob(key.public_key()))
        + _string(namespace.encode())
        + _string(b"")
        + _string(HASH_ALGORITHM.encode())
        + _string(_string(KEY_TYPE.encode()) + _string(raw_signature))
    )
    encoded = base64.b64encode(blob).decode()
    lines = [encoded[i : i + 70] for i in range(0, len(encoded), 70)]
    return "\n".join([BEGIN, *lines, END]) + "\n"


@dataclass(frozen=True)
class ParsedSignature:
    public_key: Ed25519PublicKey
    namespace: str
    hash_algorithm: str
    signature: bytes


def parse_signature(armored: str) -> ParsedSignature:
    text = armored.strip()
    if not (text.startswith(BEGIN) and text.endswith(END)):
        raise SignatureError("not an SSH signature (no BEGIN/END SSH SIGNATURE lines)")
    try:
        blob = base64.b64decode("".join(text[len(BEGIN) : -len(END)].split()), validate=True)
    except ValueError:
        raise SignatureError("the signature is not valid base64") from None
    if not blob.startswith(MAGIC) or len(blob) < 10:
        raise SignatureError("not an SSHSIG signature")
    (version,) = struct.unpack_from(">I", blob, 6)
    if version != 1:
        raise SignatureError(f"unsupported SSHSIG version {version}")
    key_blob, offset = _read_string(blob, 10)
    namespace, offset = _read_string(blob, offset)
    _reserved, offset = _read_string(blob, offset)
    hash_algorithm, offset = _read_string(blob, offset)
    sig_blob, offset = _read_string(blob, offset)
    key_type, key_offset = _read_string(key_blob, 0)
    if key_type != KEY_TYPE.encode():
        raise SignatureError(f"unsupported key type {key_type.decode(errors='replace')}")
    raw_key, _ = _read_string(key_blob, key_offset)
    sig_type, sig_offset = _read_string(sig_blob, 0)
    if sig_type != KEY_TYPE.encode():
        raise SignatureError(f"unsupported signature type {sig_type.decode(errors='replace')}")
    raw_sig, _ = _read_string(sig_blob, sig_offset)
    try:
        public = Ed25519PublicKey.from_public_bytes(raw_key)
    except ValueError:
        raise SignatureError("the signature carries a malformed public key") from None
    return ParsedSignature(
        public, namespace.decode(errors="replace"), hash_algorithm.decode(errors="replace"), raw_sig
    )


class SignerCheck(TypedDict, total=False):
    """What a signature is checked against: the keywords of `verify`, `verify_digest` and
    `verify_signer` (principal and at default to None)."""

    allowed_signers: Required[Path | AllowedSigners]
    namespace: Required[str]
    principal: str | None
    at: datetime | int | None


def verify(data: bytes, armored: str, **check: Unpack[SignerCheck]) -> str:
    """Verify `data` as `ssh-keygen -Y verify -I principal -n namespace -Overify-time=at` would and
    return the principal. Raise SignatureError (SignerUntrusted when only the trust file refuses).

    Without `principal` the signer is found as `ssh-keygen -Y find-principals` finds it (a plain name
    on one of the key's lines) and then checked as `-I` that name: the name returned is one
    `ssh-keygen -Y verify` accepts. `at` defaults to now; the validity windows are checked at it."""
    return verify_digest(hashlib.sha512(data).digest(), armored, **check)


def verify_digest(message_digest: bytes, armored: str, **check: Unpack[SignerCheck]) -> str:
    """`verify` for a SHA-512 digest (large files hashed while streaming)."""
    return verify_signer(message_digest, armored, **check).principal


def verify_signer(
    message_digest: bytes,
    armored: str,
    *,
    allowed_signers: Path | AllowedSigners,
    namespace: str,
    principal: str | None = None,
    at: datetime | int | None = None,
) -> SignerMatch:
    """`verify_digest`, returning the trust file's line that granted the key (and when it expires)."""
    parsed = parse_signature(armored)
    if parsed.namespace != namespace:
        raise SignatureError(f"the signature is for namespace '{parsed.namespace}', expected '{namespace}'")
    if parsed.hash_algorithm != HASH_ALGORITHM:
        raise SignatureError(f"unsupported hash algorithm {parsed.hash_algorithm}")
    try:
        parsed.public_key.verify(parsed.signature, _signed_data(message_digest, namespace))
    except InvalidSignature:
        raise SignatureError("the signature does not match the signed data (it was altered)") from None
    signers = (
        allowed_signers
        if isinstance(allowed_signers, AllowedSigners)
        else AllowedSigners.read(allowed_signers)
    )
    if principal is None:
        return signers.find_principal(parsed.public_key, namespace=namespace, at=at)
    return signers.check(parsed.public_key, principal=principal, namespace=namespace, at=at)


@dataclass(frozen=True)
class KeyFiles:
    private: Path
    public: Path
    allowed_signers: Path
    identity: str


def generate_keypair(
    directory: Path,
    *,
    identity: str,
    passphrase: bytes | None = None,
    name: str = "signing_key",
    namespaces: str | None = None,
) -> KeyFiles:
    """Write <name> (0600, OpenSSH format, encrypted if a passphrase is given), <name>.pub and
    allowed_signers. Refuses to overwrite an existing key."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_path = directory / name
    if private_path.exists():
        raise AifactoryError(f"{private_path} exists; refusing to overwrite a signing key", code="key-exists")
    key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_line = public_key_line(key.public_key())
    public_path = directory / f"{name}.pub"
    public_path.write_text(f"{public_line} {identity}\n")
    option = f' namespaces="{namespaces}"' if namespaces else ""
    signers = directory / "allowed_signers"
    signers.write_text(f"{identity}{option} {public_line}\n")
    return KeyFiles(private_path, public_path, signers, identity)


def load_private_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AifactoryError(
            f"cannot read the signing key {path}: {exc.strerror}",
            code="key-unreadable",
            location=Location(file=str(path)),
        ) from None
    try:
        key = serialization.load_ssh_private_key(data, password=passphrase)
    except (ValueError, TypeError) as exc:
        needs = (
            "it is encrypted: give its passphrase" if b"bcrypt" in data or passphrase is None else str(exc)
        )
        raise AifactoryError(
            f"cannot load the signing key {path}: {needs}",
            code="key-unreadable",
            location=Location(file=str(path)),
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AifactoryError(f"{path} is not an Ed25519 key", code="key-unreadable")
    return key


def ssh_keygen_verify(
    data_path: Path, signature_path: Path, *, allowed_signers: Path, identity: str, namespace: str
) -> subprocess.CompletedProcess[str]:
    """Run the stock tool, as an auditor would (used by tests and `verify --with-ssh-keygen`)."""
    with data_path.open("rb") as stdin:
        return subprocess.run(
            [
                "ssh-keygen",
                "-Y",
                "verify",
                "-f",
                str(allowed_signers),
                "-I",
                identity,
                "-n",
                namespace,
                "-s",
                str(signature_path),
            ],
            stdin=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
