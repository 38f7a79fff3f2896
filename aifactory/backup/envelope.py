"""The backup file: a signed, encrypted stream (format `aifactory.backup/v1`), written and read in
bounded memory whatever the size of what it carries.

    header      one line of JSON: format, site, when, the folder it came from, the signer's identity,
                the cipher and key-derivation settings with their salt and nonce prefix
    body        what the caller writes (the compressed tar of the state folder), encrypted in chunks
                of `chunk_bytes` with AES-256-GCM
    summary     one line of JSON: what the body holds (its sizes, chunks, files), read before anything
                is decrypted, so a restore checks free space first and stops a stream that expands past it
    signature   SSHSIG (namespace aifactory-backup) over every byte above it
    footer      `aifactory-backup-end SSSSSSSS GGGGGGGG` and a newline: the summary's and the
                signature's lengths in bytes, so both are found from the end of the file

The key comes from the passphrase by scrypt, with aifactory.secrets' settings and a random salt. Chunk
i's nonce is a random 7-byte prefix, i (4 bytes, big-endian) and one byte that is 1 on the last chunk
only (the STREAM construction): chunks cannot be reordered or dropped, and a file cut at a chunk
boundary is refused. Each chunk's associated data is the SHA-256 of the header, which ties the body
to its header. The signature is made over the encrypted bytes, so it is checked before a key is
derived or a byte decrypted, without the passphrase, and with the stock tool (docs/operations.md):

    ssh-keygen -Y verify -f allowed_signers -I backup@SITE -n aifactory-backup -s FILE.sig < SIGNED
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aifactory import signing
from aifactory.errors import BackupError, Location, SecretError
from aifactory.progress import SILENT, Progress
from aifactory.secrets import SCRYPT_PARAMS, derive_key
from aifactory.spec.model import NAME_PATTERN

FORMAT = "aifactory.backup/v1"
NAMESPACE = "aifactory-backup"
CIPHER = "AES-256-GCM"
COMPRESSION = "gzip"
CHUNK_BYTES = 1 << 20
TAG_BYTES = 16
SALT_BYTES = 16
NONCE_PREFIX_BYTES = 7
FOOTER_TAG = b"aifactory-backup-end "
FOOTER_BYTES = len(FOOTER_TAG) + 8 + 1 + 8 + 1
_FOOTER = re.compile(rb"aifactory-backup-end (\d{8}) (\d{8})\n")
# A header, summary or signature longer than these is not one aifactory wrote.
MAX_LINE = 16 * 1024
_MIN_CHUNK, _MAX_CHUNK = 4 * 1024, 16 * 1024 * 1024
_BLOCK = 1 << 20

Randomness = Callable[[int], bytes]


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


@dataclass(frozen=True)
class Header:
    """What a backup says of itself before it is decrypted (signed with the rest)."""

    site: str
    created: str
    source: str  # the state folder it was made from
    signer: str  # the identity that signed it, as the signer claims it (the trust file decides)
    salt: bytes
    nonce_prefix: bytes
    chunk_bytes: int = CHUNK_BYTES

    def to_bytes(self) -> bytes:
        return _canonical(
            {
                "format": FORMAT,
                "site": self.site,
                "created": self.created,
                "source": self.source,
                "signer": self.signer,
                "namespace": NAMESPACE,
                "cipher": CIPHER,
                "compression": COMPRESSION,
                "chunk_bytes": self.chunk_bytes,
                "kdf": {"name": "scrypt", **SCRYPT_PARAMS, "salt": base64.b64encode(self.salt).decode()},
                "nonce_prefix": base64.b64encode(self.nonce_prefix).decode(),
            }
        )

    @classmethod
    def parse(cls, line: bytes, *, name: str) -> Header:
        where = Location(file=name, path="(header)")
        try:
            document = json.loads(line)
            if not isinstance(document, dict) or document.get("format") != FORMAT:
                raise ValueError(f"format {document.get('format') if isinstance(document, dict) else None!r}")
            kdf = document["kdf"]
            settings = {key: kdf[key] for key in SCRYPT_PARAMS}
            if kdf["name"] != "scrypt" or settings != SCRYPT_PARAMS:
                raise ValueError(f"key derivation {kdf!r} is not scrypt with {SCRYPT_PARAMS}")
            if (document["cipher"], document["compression"]) != (CIPHER, COMPRESSION):
                raise ValueError(f"cipher {document['cipher']!r} with {document['compression']!r}")
            header = cls(
                site=str(document["site"]),
                created=str(document["created"]),
                source=str(document["source"]),
                signer=str(document["signer"]),
                salt=base64.b64decode(kdf["salt"], validate=True),
                nonce_prefix=base64.b64decode(document["nonce_prefix"], validate=True),
                chunk_bytes=int(document["chunk_bytes"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise BackupError(
                f"the backup's header is not one aifactory writes ({exc})",
                location=where,
                hint="give a file written by `aifactory backup` (format aifactory.backup/v1)",
            ) from None
        if not re.fullmatch(NAME_PATTERN, header.site):
            not_site = f"the backup names {header.site[:40]!r}, which is not a site name"
            raise BackupError(not_site, location=where)
        if len(header.salt) != SALT_BYTES or len(header.nonce_prefix) != NONCE_PREFIX_BYTES:
            raise BackupError("the backup's salt or nonce prefix has the wrong length", location=where)
        if not _MIN_CHUNK <= header.chunk_bytes <= _MAX_CHUNK:
            raise BackupError(f"the backup's chunk size {header.chunk_bytes} is out of range", location=where)
        return header


@dataclass(frozen=True)
class Summary:
    """What the body holds: written after it, signed with it, read before it is decrypted."""

    tar_bytes: int  # the plain tar, before compression: a restore never expands more
    compressed_bytes: int  # what was encrypted
    chunks: int
    files: int
    directories: int

    def to_bytes(self) -> bytes:
        return _canonical(
            {
                "tar_bytes": self.tar_bytes,
                "compressed_bytes": self.compressed_bytes,
                "chunks": self.chunks,
                "files": self.files,
                "directories": self.directories,
            }
        )

    @classmethod
    def parse(cls, line: bytes, *, name: str) -> Summary:
        try:
            document = json.loads(line)
            values = {key: document[key] for key in cls.__dataclass_fields__}
            if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in values.values()):
                raise ValueError("a count that is not a whole number")
        except (ValueError, KeyError, TypeError) as exc:
            raise BackupError(
                f"the backup's summary is unreadable ({exc})", location=Location(file=name, path="(summary)")
            ) from None
        return cls(**values)


def expected_chunks(compressed_bytes: int, chunk_bytes: int) -> int:
    """How many chunks EnvelopeWriter makes of this many bytes (at least one: the marked last one)."""
    return max(1, -(-compressed_bytes // chunk_bytes))


def _nonce(prefix: bytes, index: int, *, last: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def footer(summary_bytes: int, signature_bytes: int) -> bytes:
    return FOOTER_TAG + f"{summary_bytes:08d} {signature_bytes:08d}\n".encode()


class EnvelopeWriter:
    """Encrypts what is written to it, one chunk at a time, into `sink`; `finish` writes the summary,
    the signature and the footer. Holds at most one chunk in memory."""

    def __init__(self, sink: BinaryIO, header: Header, *, passphrase: bytes, key: Ed25519PrivateKey) -> None:
        self._sink = sink
        header_bytes = header.to_bytes()
        self._associated = hashlib.sha256(header_bytes).digest()
        self._cipher = AESGCM(derive_key(passphrase, header.salt))
        self._prefix = header.nonce_prefix
        self._chunk_bytes = header.chunk_bytes
        self._key = key
        self._buffer = bytearray()
        self._chunks = 0
        self._plain = 0
        self._signed = hashlib.sha512()
        self.written = 0
        self._emit(header_bytes)

    def write(self, data: bytes) -> int:
        self._buffer += data
        self._plain += len(data)
        # Strictly more than a chunk: the last chunk (marked) is only known at finish, so keep one back.
        while len(self._buffer) > self._chunk_bytes:
            self._seal(bytes(self._buffer[: self._chunk_bytes]), last=False)
            del self._buffer[: self._chunk_bytes]
        return len(data)

    def flush(self) -> None:
        """Nothing to flush before `finish` (gzip calls it)."""

    def finish(self, *, tar_bytes: int, files: int, directories: int) -> Summary:
        self._seal(bytes(self._buffer), last=True)
        self._buffer.clear()
        summary = Summary(tar_bytes, self._plain, self._chunks, files, directories)
        summary_bytes = summary.to_bytes()
        self._emit(summary_bytes)
        signature = signing.sign_digest(self._signed.digest(), self._key, NAMESPACE).encode()
        self._sink.write(signature)
        self._sink.write(footer(len(summary_bytes), len(signature)))
        self.written += len(signature) + FOOTER_BYTES
        return summary

    def _seal(self, plain: bytes, *, last: bool) -> None:
        nonce = _nonce(self._prefix, self._chunks, last=last)
        self._emit(self._cipher.encrypt(nonce, plain, self._associated))
        self._chunks += 1

    def _emit(self, data: bytes) -> None:
        self._signed.update(data)
        self._sink.write(data)
        self.written += len(data)


@dataclass(frozen=True)
class Verified:
    """A backup file whose signature verified against the admin's trust file."""

    path: Path
    header: Header
    summary: Summary
    signer: str  # the principal the trust file granted the key to
    fingerprint: str
    header_bytes: int
    body_end: int  # the body is [header_bytes, body_end)
    signed_end: int  # the signature covers [0, signed_end)
    digest: bytes  # SHA-512 of the signed bytes


@dataclass(frozen=True)
class _Layout:
    header: bytes
    summary: bytes
    signature: str
    signed_end: int


def _read_at(handle: BinaryIO, offset: int, length: int) -> bytes:
    handle.seek(offset)
    return handle.read(length)


def _layout(handle: BinaryIO, size: int, name: str) -> _Layout:
    not_backup = BackupError(
        "not an aifactory backup, or cut short (no backup footer at its end)",
        location=Location(file=name),
        hint="give the whole file written by `aifactory backup`; copy it again if it was cut",
    )
    if size < FOOTER_BYTES:
        raise not_backup
    found = _FOOTER.fullmatch(_read_at(handle, size - FOOTER_BYTES, FOOTER_BYTES))
    if not found:
        raise not_backup
    summary_bytes, signature_bytes = int(found.group(1)), int(found.group(2))
    signed_end = size - FOOTER_BYTES - signature_bytes
    if summary_bytes > MAX_LINE or signature_bytes > MAX_LINE or signed_end - summary_bytes < 0:
        raise not_backup
    first = _read_at(handle, 0, MAX_LINE)
    header, newline, _ = first.partition(b"\n")
    if not newline or len(header) + 1 > signed_end - summary_bytes:
        raise BackupError("the backup has no header line", location=Location(file=name), hint=not_backup.hint)
    try:
        signature = _read_at(handle, signed_end, signature_bytes).decode("ascii")
    except UnicodeDecodeError:
        raise BackupError("the backup's signature is not text", location=Location(file=name)) from None
    summary = _read_at(handle, signed_end - summary_bytes, summary_bytes)
    return _Layout(header + b"\n", summary, signature, signed_end)


def _sha512(handle: BinaryIO, end: int, progress: Progress) -> bytes:
    digest = hashlib.sha512()
    handle.seek(0)
    left = end
    while left:
        block = handle.read(min(_BLOCK, left))
        if not block:
            break
        digest.update(block)
        left -= len(block)
        progress.advance(nbytes=len(block))
    return digest.digest()


def verify_backup(path: Path, *, trust: Path, progress: Progress = SILENT) -> Verified:
    """Check the signature over the whole file against `trust` (an allowed_signers file), then read
    what the header and summary say; BackupError otherwise. Decrypts nothing, needs no passphrase."""
    name = str(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise BackupError(
            f"cannot read the backup: {exc.strerror}", code="backup-unreadable", location=Location(file=name)
        ) from None
    with handle:
        size = path.stat().st_size
        layout = _layout(handle, size, name)
        progress.step("verify signature", total_bytes=layout.signed_end)
        digest = _sha512(handle, layout.signed_end, progress)
    try:
        match = signing.verify_signer(digest, layout.signature, allowed_signers=trust, namespace=NAMESPACE)
    except signing.SignerUntrusted as exc:
        raise BackupError(
            f"the backup is not signed by a key {trust} trusts: {exc.message}",
            code="backup-signer-untrusted",
            location=Location(file=name),
            hint="give the allowed_signers you kept off the control host when the backup was made "
            "(<state>/backup/allowed_signers); nothing was decrypted or restored",
        ) from None
    except signing.SignatureError as exc:
        raise BackupError(
            f"the backup's signature does not verify: {exc.message}",
            code="backup-signature-invalid",
            location=Location(file=name),
            hint="the file was altered, damaged or never signed; nothing was decrypted or restored",
        ) from None
    header = Header.parse(layout.header, name=name)
    summary = Summary.parse(layout.summary, name=name)
    body_end = layout.signed_end - len(layout.summary)
    body = body_end - len(layout.header)
    if summary.chunks != expected_chunks(summary.compressed_bytes, header.chunk_bytes) or body != (
        summary.compressed_bytes + summary.chunks * TAG_BYTES
    ):
        raise BackupError(
            f"the backup's body is {body} bytes, which its summary does not account for",
            location=Location(file=name, path="(summary)"),
        )
    return Verified(
        path,
        header,
        summary,
        match.principal,
        signing.fingerprint(signing.parse_signature(layout.signature).public_key),
        len(layout.header),
        body_end,
        layout.signed_end,
        digest,
    )


class DecryptingReader(io.RawIOBase):
    """The verified backup's body, decrypted chunk by chunk as it is read.

    It reads the file a second time, hashing it again: at the end the bytes must be the ones whose
    signature verified (a file swapped between the two reads is refused). It returns end-of-file only
    after the marked last chunk decrypted and that check passed."""

    def __init__(self, verified: Verified, passphrase: bytes, *, progress: Progress = SILENT) -> None:
        super().__init__()
        self._verified = verified
        self._handle = verified.path.open("rb")
        self._cipher = AESGCM(derive_key(passphrase, verified.header.salt))
        self._associated = hashlib.sha256(verified.header.to_bytes()).digest()
        self._signed = hashlib.sha512(self._handle.read(verified.header_bytes))
        self._offset = verified.header_bytes
        self._index = 0
        self._pending = b""
        self._done = False
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending and not self._done:
            self._next_chunk()
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def close(self) -> None:
        self._handle.close()
        super().close()

    def _next_chunk(self) -> None:
        verified = self._verified
        size = min(verified.header.chunk_bytes + TAG_BYTES, verified.body_end - self._offset)
        last = self._offset + size == verified.body_end
        sealed = self._handle.read(size)
        if len(sealed) != size or size < TAG_BYTES:
            raise self._damaged("it ends inside a chunk")
        self._signed.update(sealed)
        nonce = _nonce(verified.header.nonce_prefix, self._index, last=last)
        try:
            self._pending = self._cipher.decrypt(nonce, sealed, self._associated)
        except InvalidTag:
            if self._index == 0:
                raise SecretError(
                    f"cannot decrypt the backup {verified.path}: wrong passphrase",
                    hint="give the passphrase the backup was made with (--passphrase-file, "
                    "AIFACTORY_PASSPHRASE_FILE or the prompt); its signature verified, so the file "
                    "itself is intact; nothing was restored",
                ) from None
            raise self._damaged(f"chunk {self._index} does not decrypt") from None
        self._progress.advance(nbytes=size)
        self._offset += size
        self._index += 1
        if last:
            self._finish()

    def _finish(self) -> None:
        verified = self._verified
        self._signed.update(self._handle.read(verified.signed_end - verified.body_end))
        if self._index != verified.summary.chunks or self._signed.digest() != verified.digest:
            raise self._damaged("the file changed after its signature was checked")
        self._done = True

    def _damaged(self, why: str) -> BackupError:
        return BackupError(
            f"the backup is damaged: {why}",
            location=Location(file=str(self._verified.path)),
            hint="nothing was restored; copy the backup again and run the same restore",
        )
