"""A CycloneDX 1.5 JSON SBOM of everything in the bundle, with licenses and the dependency graph.

Components: every Python wheel (purl pkg:pypi), every Ansible collection, every Debian package of the
apt repository (purl pkg:deb) and every other file (type `file`), each with its SHA-256.

Licenses and dependencies come from the packages themselves:
- wheels: the METADATA file (`License-Expression`, else the `License ::` classifiers, else a short
  `License` field) and its `Requires-Dist`, evaluated for the bundle's target (CPython 3.11 on Linux,
  no extras);
- Debian packages: the machine-readable copyright file (`usr/share/doc/<package>/copyright`, every
  `License:` of its paragraphs), else the licenses it points to in /usr/share/common-licenses; and
  the control file's `Pre-Depends` and `Depends` (every alternative the bundle carries);
- collections: MANIFEST.json's `license` and `dependencies`.
A dependency the bundle does not carry is left out of the graph (it is not in the bundle). The
bundle's own component depends on every component.

The serial number is a UUIDv5 of the bundle's content (site, version and the sorted file hashes) and
the one timestamp is the build timestamp, so the same inputs give the same SBOM bytes.
"""

from __future__ import annotations

import json
import re
import tarfile
import uuid
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.parser import HeaderParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

from packaging.markers import InvalidMarker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from aifactory.errors import BundleError, Location

SBOM_PATH = "sbom.cdx.json"
_SERIAL_NAMESPACE = uuid.UUID("5b0b7c1e-4f3a-5d8e-9a41-6166616374f1")
# Where the bundle's wheels run (docs/site-spec.md: platform): environment markers are evaluated
# for this, not for the machine that builds the bundle, so every build machine writes the same SBOM.
TARGET_ENVIRONMENT = {
    "implementation_name": "cpython",
    "implementation_version": "3.11.2",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "python_full_version": "3.11.2",
    "python_version": "3.11",
    "sys_platform": "linux",
    "extra": "",
}
_COMMON_LICENSES = re.compile(r"/usr/share/common-licenses/([A-Za-z0-9.+_-]+[A-Za-z0-9+])")


@dataclass(frozen=True)
class Licenses:
    """An SPDX expression (one) or license names (any number), as the package states them."""

    expression: str = ""
    names: tuple[str, ...] = ()

    def as_cyclonedx(self) -> list[dict[str, Any]]:
        if self.expression:
            return [{"expression": self.expression}]
        return [{"license": {"name": name}} for name in self.names]


@dataclass(frozen=True)
class Described:
    """What a package says about itself: its licenses and what it needs (names, as its kind spells them)."""

    licenses: Licenses = Licenses()
    requires: tuple[tuple[str, ...], ...] = ()  # each entry: alternatives, any one of which will do


@dataclass(frozen=True)
class Origin:
    """Where a package pinned from another Debian release was fetched (its URL and release)."""

    url: str
    distro: str


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
    described: Described = Described()
    origin: Origin | None = None

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
        licenses = self.described.licenses.as_cyclonedx()
        if licenses:
            component["licenses"] = licenses
        if self.origin:
            component["externalReferences"] = [{"type": "distribution", "url": self.origin.url}]
        return component

    def purl(self) -> str | None:
        if self.kind == "wheel" and self.version:
            return f"pkg:pypi/{canonicalize_name(self.name)}@{quote(self.version, safe='')}"
        if self.kind == "deb" and self.version:
            distro = f"&distro={self.origin.distro}" if self.origin else ""
            version = quote(self.version, safe="")
            return f"pkg:deb/debian/{self.name}@{version}?arch={self.extra or 'all'}{distro}"
        if self.kind == "collection" and self.version:
            return f"pkg:generic/ansible-collection/{self.extra}.{self.name}@{self.version}"
        return None

    def key(self) -> str:
        """The name others use to depend on it."""
        if self.kind == "wheel":
            return f"wheel:{canonicalize_name(self.name)}"
        if self.kind == "collection":
            return f"collection:{self.extra}.{self.name}"
        return f"{self.kind}:{self.name}"


def _unreadable(path: Path, what: str, exc: Exception) -> BundleError:
    return BundleError(
        f"cannot read the {what} of {path.name}: {exc}",
        code="bundle-build-failed",
        location=Location(file=str(path)),
        hint="the file is damaged; delete it from the cache and build again",
    )


def _wheel_licenses(metadata: Any, license_file_heading: str = "") -> Licenses:
    expression = (metadata.get("License-Expression") or "").strip()
    if expression:
        return Licenses(expression=expression)
    classifiers = [str(c) for c in metadata.get_all("Classifier") or [] if str(c).startswith("License ::")]
    names = [c.split("::")[-1].strip() for c in classifiers if c.split("::")[-1].strip() != "OSI Approved"]
    if names:
        return Licenses(names=tuple(sorted(set(names))))
    text = " ".join(str(metadata.get("License") or "").split())
    if text and len(text) <= 100:
        return Licenses(names=(text,))
    if text:  # the whole license text: name it by its first words
        return Licenses(names=(text[:60].rstrip() + "... (license text in the wheel's metadata)",))
    if license_file_heading:  # nothing in the headers: the license file the wheel ships names it
        return Licenses(names=(f"{license_file_heading} (from the wheel's license file)",))
    return Licenses()


def _license_file_heading(wheel: zipfile.ZipFile, metadata_name: str, metadata: Any) -> str:
    """The first line of the first license file a wheel's metadata names (`License-File`), if short.

    Core metadata 2.4 puts the files under `.dist-info/licenses/`; older wheels beside METADATA.
    """
    dist_info = metadata_name.rsplit("/", 1)[0]
    members = set(wheel.namelist())
    for entry in metadata.get_all("License-File") or []:
        for candidate in (f"{dist_info}/licenses/{entry}", f"{dist_info}/{entry}"):
            if candidate in members:
                text = wheel.read(candidate)[:4096].decode("utf-8", errors="replace")
                first = next((line.strip() for line in text.splitlines() if line.strip()), "")
                return " ".join(first.split())[:80] if first else ""
    return ""


def _wheel_requires(metadata: Any) -> tuple[tuple[str, ...], ...]:
    needed = set()
    for line in metadata.get_all("Requires-Dist") or []:
        try:
            requirement = Requirement(str(line))
            if requirement.marker is None or requirement.marker.evaluate(dict(TARGET_ENVIRONMENT)):
                needed.add(f"wheel:{canonicalize_name(requirement.name)}")
        except (InvalidRequirement, InvalidMarker):
            continue  # a requirement this packaging cannot read is not in the graph
    return tuple((name,) for name in sorted(needed))


def describe_wheel(path: Path) -> Described:
    try:
        with zipfile.ZipFile(path) as wheel:
            name = next(
                n for n in wheel.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
            )
            metadata = HeaderParser().parsestr(wheel.read(name).decode("utf-8", errors="replace"))
            heading = _license_file_heading(wheel, name, metadata)
    except (OSError, zipfile.BadZipFile, StopIteration, KeyError) as exc:
        raise _unreadable(path, "metadata", exc) from None
    return Described(_wheel_licenses(metadata, heading), _wheel_requires(metadata))


def _deb_depends(control: Any) -> tuple[tuple[str, ...], ...]:
    groups = []
    for field in ("Pre-Depends", "Depends"):
        for group in str(control.get(field) or "").split(","):
            names = tuple(
                "deb:" + alternative.split()[0].split(":")[0]
                for alternative in group.split("|")
                if alternative.strip()
            )
            if names:
                groups.append(names)
    return tuple(sorted(set(groups)))


def _synopsis(license_: object) -> str:
    return str(getattr(license_, "synopsis", "") or "")


def _copyright_licenses(text: str) -> Licenses:
    from debian.copyright import Copyright, Error, NotMachineReadableError

    try:
        parsed = Copyright(text.splitlines(), strict=False)
        # python-debian types `license` loosely (a descriptor): read its synopsis by name
        found = [_synopsis(p.license) for p in parsed.all_files_paragraphs()]
        found.append(_synopsis(parsed.header.license))
        names = sorted({" ".join(n.split()) for n in found if n and n.strip()})
        if names:
            return Licenses(names=tuple(names))
    except (NotMachineReadableError, Error, ValueError):
        pass  # an older, free-form copyright file: look for the licenses it points to
    pointed = sorted(set(_COMMON_LICENSES.findall(text)))
    return Licenses(names=tuple(pointed))


def describe_deb(path: Path) -> Described:
    from debian.debfile import DebError, DebFile

    try:
        deb = DebFile(str(path))
        control = deb.debcontrol()
        package = str(control.get("Package"))
        text = ""
        for name in (f"./usr/share/doc/{package}/copyright", f"usr/share/doc/{package}/copyright"):
            content = deb.data.get_content(name) if deb.data.has_file(name) else None
            if content is not None:
                text = content.decode("utf-8", errors="replace")
                break
    except (OSError, DebError, KeyError, tarfile.TarError) as exc:
        raise _unreadable(path, "control or copyright file", exc) from None
    licenses = _copyright_licenses(text) if text else Licenses()
    if not licenses.names:
        where = f"usr/share/doc/{package}/copyright"
        licenses = Licenses(names=(f"not stated in a form a tool can read: see {where}",))
    return Described(licenses, _deb_depends(control))


def describe_collection(path: Path) -> Described:
    try:
        with tarfile.open(path, "r:gz") as tar:
            handle = tar.extractfile("MANIFEST.json")
            info = json.load(handle)["collection_info"] if handle else {}
    except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
        raise _unreadable(path, "MANIFEST.json", exc) from None
    names = tuple(sorted(str(n) for n in info.get("license") or []))
    if not names and info.get("license_file"):
        names = (f"see {info['license_file']} in the collection",)
    if not names:  # say so, as for a package whose copyright file no tool can read
        names = ("not stated: the collection's galaxy.yml names no license",)
    licenses = (
        Licenses(expression=names[0]) if len(names) == 1 and " " not in names[0] else Licenses(names=names)
    )
    requires = tuple((f"collection:{name}",) for name in sorted(info.get("dependencies") or {}))
    return Described(licenses, requires)


def describe(kind: str, path: Path) -> Described:
    """Licenses and dependencies of one bundle file, read from the file itself."""
    if kind == "wheel":
        return describe_wheel(path)
    if kind == "deb":
        return describe_deb(path)
    if kind == "collection":
        return describe_collection(path)
    return Described()


def serial_number(site: str, version: str, components: list[Component]) -> str:
    content = "\n".join([site, version, *sorted(f"{c.path} {c.sha256}" for c in components)])
    return f"urn:uuid:{uuid.uuid5(_SERIAL_NAMESPACE, content)}"


def dependencies(root: str, components: Iterable[Component]) -> list[dict[str, Any]]:
    """The graph: each component with the components it needs that the bundle carries."""
    ordered = sorted(components, key=lambda c: c.path)
    refs: dict[str, list[str]] = {}
    for component in ordered:
        refs.setdefault(component.key(), []).append(component.path)
    graph = [{"ref": root, "dependsOn": [c.path for c in ordered]}]
    for component in ordered:
        needs = {
            ref for group in component.described.requires for name in group for ref in refs.get(name, [])
        }
        needs.discard(component.path)
        graph.append({"ref": component.path, "dependsOn": sorted(needs)})
    return graph


def render(
    *, site: str, version: str, timestamp: int, aifactory_version: str, components: list[Component]
) -> bytes:
    ordered = sorted(components, key=lambda c: c.path)
    root = f"aifactory-bundle/{site}@{version}"
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
                "bom-ref": root,
                "name": f"aifactory-bundle-{site}",
                "version": version,
            },
        },
        "components": [c.as_cyclonedx() for c in ordered],
        "dependencies": dependencies(root, ordered),
    }
    return json.dumps(document, indent=1, sort_keys=True, ensure_ascii=True).encode() + b"\n"
