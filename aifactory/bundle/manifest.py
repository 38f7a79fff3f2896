"""The bundle's manifest, its SHA256SUMS twin and the bundle version.

`manifest.json` (canonical JSON: sorted keys, no spaces) names the site, the version, the build
timestamp, the plan's digest and every payload file with its size, SHA-256 and kind. It is the one
signed object: `manifest.json.sig` is an SSHSIG signature over its bytes (namespace aifactory-bundle).
`SHA256SUMS` lists the same payload files plus manifest.json in `sha256sum` format, for stock tools;
verification re-derives it from the manifest, so it cannot disagree unnoticed.

Bundle versions are dot-separated integers compared number by number (`20261122.143000` < `20261122.150000`,
`2.10` > `2.9`). The default comes from the build timestamp (`YYYYMMDD.HHMMSS`, UTC), so later builds
carry higher versions; an explicit `--bundle-version` must also only ever go up (anti-rollback).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import total_ordering
from typing import Any

from aifactory.errors import BundleError, Location, UsageError
from aifactory.signing import BUNDLE_NAMESPACE

SCHEMA = "aifactory.bundle/v1"
NAMESPACE = BUNDLE_NAMESPACE
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
SUMS = "SHA256SUMS"
METADATA_FILES = (MANIFEST, SIGNATURE, SUMS)
MAX_METADATA_BYTES = 64 * 1024**2
_VERSION = re.compile(r"^\d{1,20}(\.\d{1,20}){0,5}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@total_ordering
@dataclass(frozen=True)
class BundleVersion:
    text: str

    @classmethod
    def parse(cls, text: str) -> BundleVersion:
        if not _VERSION.match(text):
            raise UsageError(
                f"bundle version {text!r} is not dot-separated numbers",
                hint="use e.g. 20261122.143000 or 3.2.1; versions must only go up",
            )
        return cls(text)

    @classmethod
    def from_timestamp(cls, timestamp: int) -> BundleVersion:
        return cls(datetime.fromtimestamp(timestamp, UTC).strftime("%Y%m%d.%H%M%S"))

    @property
    def key(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.text.split("."))

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, BundleVersion):
            return NotImplemented
        return self.key < other.key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BundleVersion) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    kind: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "kind": self.kind}


@dataclass(frozen=True)
class Manifest:
    site: str
    version: BundleVersion
    created: str  # ISO 8601 UTC, from the build timestamp
    timestamp: int
    plan_digest: str
    spec_digest: str
    aifactory_version: str
    files: tuple[FileEntry, ...]
    contents: dict[str, Any] = field(default_factory=dict)  # wheelsets, collections, apt, extras

    def to_bytes(self) -> bytes:
        body = {
            "schema": SCHEMA,
            "site": self.site,
            "version": self.version.text,
            "created": self.created,
            "timestamp": self.timestamp,
            "plan_digest": self.plan_digest,
            "spec_digest": self.spec_digest,
            "aifactory_version": self.aifactory_version,
            "contents": self.contents,
            "files": [f.as_dict() for f in self.files],
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"

    @property
    def by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    def sums(self, manifest_sha256: str) -> bytes:
        """SHA256SUMS: every payload file and the manifest, in `sha256sum -c` format."""
        lines = [f"{f.sha256}  {f.path}\n" for f in self.files]
        lines.append(f"{manifest_sha256}  {MANIFEST}\n")
        return "".join(sorted(lines, key=lambda line: line[66:])).encode()

    @classmethod
    def parse(cls, data: bytes, *, source: str) -> Manifest:
        where = Location(file=f"{source}:{MANIFEST}")
        try:
            body = json.loads(data)
            if body.get("schema") != SCHEMA:
                raise BundleError(
                    f"unknown manifest schema {body.get('schema')!r}, expected {SCHEMA}",
                    code="manifest-invalid",
                    location=where,
                    hint="this aifactory is too old for the bundle, or it is not a bundle",
                )
            files = tuple(_file_entry(item) for item in body["files"])
            return cls(
                site=str(body["site"]),
                version=BundleVersion.parse(str(body["version"])),
                created=str(body["created"]),
                timestamp=int(body["timestamp"]),
                plan_digest=str(body["plan_digest"]),
                spec_digest=str(body["spec_digest"]),
                aifactory_version=str(body["aifactory_version"]),
                files=files,
                contents=dict(body.get("contents") or {}),
            )
        except BundleError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, UsageError) as exc:
            raise BundleError(
                f"the manifest cannot be read: {exc}", code="manifest-invalid", location=where
            ) from None


def _file_entry(item: dict[str, Any]) -> FileEntry:
    entry = FileEntry(str(item["path"]), int(item["size"]), str(item["sha256"]), str(item["kind"]))
    if not _HEX64.match(entry.sha256) or entry.size < 0:
        raise ValueError(f"bad entry for {entry.path}")
    return entry


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
