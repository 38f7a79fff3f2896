"""A CycloneDX 1.5 JSON SBOM of everything in the bundle.

Components: every Python wheel (purl pkg:pypi), every Ansible collection, every Debian package of the
apt repository (purl pkg:deb) and every other file (type `file`), each with its SHA-256. The serial
number is a UUIDv5 of the bundle's content (site, version and the sorted file hashes) and the one
timestamp is the build timestamp, so the same inputs give the same SBOM bytes.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from packaging.utils import canonicalize_name

SBOM_PATH = "sbom.cdx.json"
_SERIAL_NAMESPACE = uuid.UUID("5b0b7c1e-4f3a-5d8e-9a41-6166616374f1")


@dataclass(frozen=True)
class Component:
    """One thing the bundle carries: `kind` is wheel | collection | deb | file."""

    kind: str
    path: str
    sha256: str
    size: int
    name: str
    version: str | None = None
    extra: str | None = None  # deb: architecture; collection: namespace

    def as_cyclonedx(self) -> dict[str, Any]:
        component: dict[str, Any] = {
            "type": "file" if self.kind == "file" else "library",
            "bom-ref": self.path,
            "name": self.name,
            "hashes": [{"alg": "SHA-256", "content": self.sha256}],
            "properties": [
                {"name": "aifactory:bundle:path", "value": self.path},
                {"name": "aifactory:bundle:size", "value": str(self.size)},
            ],
        }
        if self.version:
            component["version"] = self.version
        purl = self.purl()
        if purl:
            component["purl"] = purl
        if self.kind == "collection" and self.extra:
            component["group"] = self.extra
        return component

    def purl(self) -> str | None:
        if self.kind == "wheel" and self.version:
            return f"pkg:pypi/{canonicalize_name(self.name)}@{quote(self.version, safe='')}"
        if self.kind == "deb" and self.version:
            return f"pkg:deb/debian/{self.name}@{quote(self.version, safe='')}?arch={self.extra or 'all'}"
        if self.kind == "collection" and self.version:
            return f"pkg:generic/ansible-collection/{self.extra}.{self.name}@{self.version}"
        return None


def serial_number(site: str, version: str, components: list[Component]) -> str:
    content = "\n".join([site, version, *sorted(f"{c.path} {c.sha256}" for c in components)])
    return f"urn:uuid:{uuid.uuid5(_SERIAL_NAMESPACE, content)}"


def render(
    *, site: str, version: str, timestamp: int, aifactory_version: str, components: list[Component]
) -> bytes:
    ordered = sorted(components, key=lambda c: c.path)
    document = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": serial_number(site, version, ordered),
        "version": 1,
        "metadata": {
            "timestamp": datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {
                "components": [{"type": "application", "name": "aifactory", "version": aifactory_version}]
            },
            "component": {
                "type": "application",
                "bom-ref": f"aifactory-bundle/{site}@{version}",
                "name": f"aifactory-bundle-{site}",
                "version": version,
            },
        },
        "components": [c.as_cyclonedx() for c in ordered],
    }
    return json.dumps(document, indent=1, sort_keys=True, ensure_ascii=True).encode() + b"\n"
