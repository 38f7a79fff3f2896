"""Seal a set of payload files into a signed bundle archive.

Hash every payload file (all cores), write manifest.json, SHA256SUMS and manifest.json.sig, then
stream everything into a normalized tar (one file, or parts of at most `part_size` bytes). Memory
stays bounded: files are streamed from where they lie, never loaded whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aifactory import signing
from aifactory.bundle.archive import write_tar
from aifactory.bundle.hashing import Digest, hash_files
from aifactory.bundle.manifest import (
    MANIFEST,
    METADATA_FILES,
    NAMESPACE,
    SIGNATURE,
    SUMS,
    BundleVersion,
    FileEntry,
    Manifest,
    digest_of,
)
from aifactory.bundle.seal import frame as seal_frame
from aifactory.bundle.seal import statement as seal_statement
from aifactory.bundle.source import PartsWriter
from aifactory.bundle.zstd import CompressingWriter
from aifactory.errors import BundleError, Location
from aifactory.progress import SILENT, Progress


@dataclass(frozen=True)
class PayloadFile:
    source: Path
    kind: str  # wheel | collection | deb | apt-index | policy | plan | sbom | extra


@dataclass(frozen=True)
class Header:
    """What the manifest says besides the file list."""

    site: str
    version: BundleVersion
    created: str
    timestamp: int
    plan_digest: str
    spec_digest: str
    aifactory_version: str
    contents: dict[str, object]


@dataclass(frozen=True)
class Sealed:
    parts: list[Path]
    manifest: Manifest
    digest: str  # sha256 of manifest.json: the bundle's identity
    archive_bytes: int
    payload_bytes: int


def hash_payload(
    payload: Mapping[str, PayloadFile],
    known: Mapping[Path, Digest] | None = None,
    *,
    workers: int | None = None,
    progress: Progress = SILENT,
) -> dict[Path, Digest]:
    known = dict(known or {})
    missing = list(dict.fromkeys(f.source for f in payload.values() if f.source not in known))
    if missing:
        progress.step("hash payload", total_items=len(missing))
    known.update(
        hash_files(missing, workers=workers, on_hashed=lambda d: progress.advance(items=1, nbytes=d.size))
    )
    return known


def seal(
    payload: Mapping[str, PayloadFile],
    header: Header,
    *,
    key: Ed25519PrivateKey,
    output: Path,
    work: Path,
    part_size: int | None = None,
    digests: Mapping[Path, Digest] | None = None,
    workers: int | None = None,
    compress: str | None = None,
    progress: Progress = SILENT,
) -> Sealed:
    clash = sorted(set(payload) & set(METADATA_FILES))
    if clash:
        raise BundleError(f"a payload file may not be named {clash[0]}", code="bundle-build-failed")
    hashed = hash_payload(payload, digests, workers=workers, progress=progress)
    entries = tuple(
        FileEntry(path, hashed[f.source].size, hashed[f.source].sha256, f.kind)
        for path, f in sorted(payload.items())
    )
    manifest = Manifest(
        site=header.site,
        version=header.version,
        created=header.created,
        timestamp=header.timestamp,
        plan_digest=header.plan_digest,
        spec_digest=header.spec_digest,
        aifactory_version=header.aifactory_version,
        files=entries,
        contents=dict(header.contents),
    )
    manifest_bytes = manifest.to_bytes()
    work.mkdir(parents=True, exist_ok=True)
    metadata = {
        MANIFEST: manifest_bytes,
        SIGNATURE: signing.sign(manifest_bytes, key, NAMESPACE).encode(),
        SUMS: manifest.sums(hashlib.sha256(manifest_bytes).hexdigest()),
    }
    for name, data in metadata.items():
        (work / name).write_bytes(data)
    files = [(path, f.source) for path, f in payload.items()] + [(name, work / name) for name in metadata]
    _check_sizes(payload, hashed)
    output.parent.mkdir(parents=True, exist_ok=True)
    progress.step("write archive", total_items=len(files), total_bytes=sum(e.size for e in entries))
    with PartsWriter(output, part_size) as writer:
        if compress == "zstd":
            compressed = _Hashing(writer)
            compressing = CompressingWriter(compressed)
            write_tar(_Counted(compressing, progress), files, mtime=header.timestamp)  # type: ignore[arg-type]  # tarfile's stream mode (w|) only calls write()
            compressing.finish()
            writer.write(
                _seal_frame(
                    manifest, manifest_bytes, key, compressed=compressed, tar_bytes=compressing.written
                )
            )
        else:
            write_tar(_Counted(writer, progress), files, mtime=header.timestamp)  # type: ignore[arg-type]  # tarfile's stream mode (w|) only calls write()
        parts = writer.commit()
        written = writer.written
    return Sealed(parts, manifest, digest_of(manifest_bytes), written, sum(e.size for e in entries))


class _Counted:
    """A stream that tells the progress how many bytes went through it."""

    def __init__(self, sink: Any, progress: Progress) -> None:
        self.sink = sink
        self.progress = progress

    def write(self, data: bytes) -> int:
        written = int(self.sink.write(data) or len(data))
        self.progress.advance(nbytes=len(data))
        return written


class _Hashing:
    """Passes bytes on to `sink`, counting and hashing them (the compressed stream the seal signs)."""

    def __init__(self, sink: PartsWriter) -> None:
        self._sink = sink
        self._digest = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        self.count += len(data)
        return self._sink.write(data)

    @property
    def sha256(self) -> str:
        return "sha256:" + self._digest.hexdigest()


def _seal_frame(
    manifest: Manifest, manifest_bytes: bytes, key: Ed25519PrivateKey, *, compressed: _Hashing, tar_bytes: int
) -> bytes:
    """The signed seal that lets verify and import check a compressed bundle before expanding it."""
    signed = seal_statement(
        compressed_bytes=compressed.count,
        compressed_sha256=compressed.sha256,
        tar_bytes=tar_bytes,
        manifest=digest_of(manifest_bytes),
        site=manifest.site,
        version=manifest.version.text,
    )
    return seal_frame(signed, signing.sign(signed, key, NAMESPACE))


def _check_sizes(payload: Mapping[str, PayloadFile], hashed: Mapping[Path, Digest]) -> None:
    """A file that changes while the bundle is built would be sealed with a wrong hash: refuse."""
    for path, item in payload.items():
        if item.source.stat().st_size != hashed[item.source].size:
            raise BundleError(
                f"{item.source} changed while the bundle was being built",
                code="bundle-build-failed",
                location=Location(file=str(item.source), path=path),
                hint="build again",
            )
