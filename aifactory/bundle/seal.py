"""The seal of a compressed bundle: a signature over the compressed bytes, checked before expanding.

A zstd bundle ends with one zstd *skippable frame* (stock `zstd -d` skips it, so the stream still
decompresses to the plain tar byte for byte) holding a signed statement:

    {"compressed_bytes": N, "compressed_sha256": "sha256:...", "manifest": "sha256:...",
     "schema": "aifactory.bundle-seal/v1", "site": "...", "tar_bytes": M, "version": "..."}

signed like the manifest (SSHSIG, namespace aifactory-bundle). `verify` and `import` read the seal
from the end of the last part, check its signature against the trust file, hash the N compressed
bytes before it, and only then decompress, stopping with an error as soon as the output passes the M
bytes the signer stated (and refusing up front when the disk has no room for M). A bundle from
anyone the trust file does not name is refused having decompressed nothing, whatever it expands to.

Frame layout: magic 0x184D2A5A (little-endian) | u32 content length | content, where content is
`statement JSON line \\n armored signature` followed by a u32 (its length) and `AIFSEAL1`, so the
seal is found from the end of the file.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory import signing
from aifactory.bundle.manifest import NAMESPACE
from aifactory.bundle.source import PartsReader
from aifactory.errors import BundleError, Location

SCHEMA = "aifactory.bundle-seal/v1"
FRAME_MAGIC = 0x184D2A5A  # one of zstd's skippable-frame magics (0x184D2A50..0x184D2A5F)
FOOTER = b"AIFSEAL1"
MAX_BODY = 64 * 1024  # a statement and a signature; anything larger is not a seal
_TAIL = struct.calcsize("<I") + len(FOOTER)
_BLOCK = 1 << 20


@dataclass(frozen=True)
class Seal:
    """What the signer stated about the compressed bundle, once its signature verified."""

    compressed_bytes: int
    compressed_sha256: str
    tar_bytes: int
    manifest: str  # sha256 of manifest.json inside
    site: str
    version: str
    signer: str


def statement(
    *, compressed_bytes: int, compressed_sha256: str, tar_bytes: int, manifest: str, site: str, version: str
) -> bytes:
    document = {
        "schema": SCHEMA,
        "compressed_bytes": compressed_bytes,
        "compressed_sha256": compressed_sha256,
        "tar_bytes": tar_bytes,
        "manifest": manifest,
        "site": site,
        "version": version,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def frame(signed_statement: bytes, signature: str) -> bytes:
    body = signed_statement + b"\n" + signature.encode()
    content = body + struct.pack("<I", len(body)) + FOOTER
    return struct.pack("<II", FRAME_MAGIC, len(content)) + content


def open_seal(reader: PartsReader, *, trust: Path, name: str) -> Seal:
    """Read, verify and check the seal against the compressed bytes before it; BundleError otherwise."""
    start, signed_statement, signature = _read_frame(reader, name=name)
    where = Location(file=name, path="(seal)")
    try:
        signer = signing.verify(signed_statement, signature, allowed_signers=trust, namespace=NAMESPACE)
    except signing.SignerUntrusted as exc:
        raise BundleError(
            f"the compressed bundle's seal is not signed by a key {trust} trusts: {exc.message}",
            code="signature-untrusted",
            location=where,
            hint="nothing was decompressed; check that you have the right allowed_signers file and bundle",
        ) from None
    except signing.SignatureError as exc:
        raise BundleError(
            f"the compressed bundle's seal does not verify: {exc.message}",
            code="signature-invalid",
            location=where,
            hint="nothing was decompressed; the bundle or its seal was altered",
        ) from None
    seal = _parse(signed_statement, signer, where)
    if seal.compressed_bytes != start:
        raise _mismatch(
            f"the seal covers {seal.compressed_bytes} compressed bytes, the bundle has {start}", where
        )
    found = _sha256(reader, start)
    if found != seal.compressed_sha256:
        raise _mismatch(
            f"the compressed bytes' SHA-256 is {found}, the seal says {seal.compressed_sha256}", where
        )
    return seal


def _read_frame(reader: PartsReader, *, name: str) -> tuple[int, bytes, str]:
    tail = reader.pread(_TAIL, max(0, reader.size - _TAIL))
    if len(tail) != _TAIL or not tail.endswith(FOOTER):
        raise BundleError(
            "the compressed bundle carries no seal (no signature over its compressed bytes), so it is "
            "refused before anything is decompressed",
            code="seal-missing",
            location=Location(file=name),
            hint="it was cut short, or compressed by an aifactory without seals: copy it again, or build "
            "it again; a plain (uncompressed) bundle needs no seal",
        )
    (length,) = struct.unpack_from("<I", tail)
    start = reader.size - _TAIL - length - 8
    if length > MAX_BODY or start < 0:
        raise _malformed(name)
    head = reader.pread(8, start)
    magic, content_length = struct.unpack("<II", head)
    if magic != FRAME_MAGIC or content_length != length + _TAIL:
        raise _malformed(name)
    body = reader.pread(length, start + 8)
    signed_statement, _, signature = body.partition(b"\n")
    try:
        return start, signed_statement, signature.decode("ascii")
    except UnicodeDecodeError:
        raise _malformed(name) from None


def _parse(signed_statement: bytes, signer: str, where: Location) -> Seal:
    try:
        document: Any = json.loads(signed_statement)
        if document.get("schema") != SCHEMA:
            raise ValueError(f"unknown schema {document.get('schema')!r}")
        return Seal(
            compressed_bytes=_count(document["compressed_bytes"]),
            compressed_sha256=str(document["compressed_sha256"]),
            tar_bytes=_count(document["tar_bytes"]),
            manifest=str(document["manifest"]),
            site=str(document["site"]),
            version=str(document["version"]),
            signer=signer,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BundleError(
            f"the compressed bundle's seal is signed but unreadable: {exc}",
            code="seal-invalid",
            location=where,
        ) from None


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{value!r} is not a byte count")
    return value


def _sha256(reader: PartsReader, length: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while offset < length:
        block = reader.pread(min(_BLOCK, length - offset), offset)
        if not block:
            break
        digest.update(block)
        offset += len(block)
    return "sha256:" + digest.hexdigest()


def _mismatch(message: str, where: Location) -> BundleError:
    return BundleError(
        message,
        code="seal-mismatch",
        location=where,
        hint="nothing was decompressed; the compressed bundle was altered or damaged: copy it again",
    )


def _malformed(name: str) -> BundleError:
    return BundleError(
        "the compressed bundle's seal is malformed",
        code="seal-invalid",
        location=Location(file=name, path="(seal)"),
        hint="nothing was decompressed; the bundle was altered or damaged: copy it again",
    )
