"""The NIST SP 800-53 rev 5 catalog and the moderate baseline profile aifactory ships (OSCAL JSON).

Every control id an aifactory OSCAL document names resolves against the catalog in
`oscal_content/` (NIST's own file, byte for byte; where it came from, with digests, is in
`oscal_content/SOURCES.json`). Every file there is checked against its recorded SHA-256 before it
is used: a changed catalog fails closed.

The profile is aifactory's: NIST's moderate baseline profile could not be obtained from a package
registry, so `oscal_content/aifactory_SP-800-53_rev5_MODERATE-baseline_profile.json` selects, from
the shipped catalog, the SP 800-53B moderate baseline controls that aifactory implements
(`controls.MODERATE_BASELINE`). `scripts/oscal_profile.py` rewrites it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from aifactory.audit.controls import MODERATE_BASELINE, oscal_control_id, sort_key
from aifactory.audit.model import content_uuid
from aifactory.errors import AuditError, Location

CONTENT = Path(__file__).resolve().parent / "oscal_content"
SOURCES = "SOURCES.json"
CATALOG = "NIST_SP-800-53_rev5_catalog.json"
PROFILE = "aifactory_SP-800-53_rev5_MODERATE-baseline_profile.json"
OSCAL_VERSION = "1.2.1"  # the version compliance-trestle 5.2.0 reads and writes
# Where NIST publishes the catalog (what the profile's import names beside the shipped copy's digest).
NIST_CATALOG_URL = (
    "https://raw.githubusercontent.com/usnistgov/oscal-content/main/nist.gov/SP800-53/rev5/json/"
    "NIST_SP-800-53_rev5_catalog.json"
)
PROFILE_DATE = "2026-12-01T00:00:00Z"  # when the profile's selection last changed (keeps it reproducible)


@dataclass(frozen=True)
class CatalogControl:
    id: str  # the catalog's id: ac-2, ac-2.3
    label: str  # as people write it: AC-2, AC-2(3)
    title: str  # the control's own title; an enhancement's is prefixed with its parent's
    family: str  # the group's id: ac
    withdrawn: bool


@dataclass(frozen=True)
class Catalog:
    title: str
    version: str
    sha256: str
    controls: dict[str, CatalogControl]
    families: dict[str, str]  # group id -> title

    def get(self, control_id: str) -> CatalogControl | None:
        """By either spelling: "AC-2(3)" or "ac-2.3"."""
        return self.controls.get(oscal_control_id(control_id))

    def resolve(self, control_id: str) -> CatalogControl:
        found = self.get(control_id)
        if found is None:
            raise AuditError(
                f"control {control_id} is not in the NIST SP 800-53 rev 5 catalog",
                code="control-unknown",
                hint="name controls as the catalog does (e.g. AC-3, SC-28(1))",
            )
        return found


def content_file(name: str) -> Path:
    """A file of oscal_content/, after checking it against the SHA-256 recorded in SOURCES.json."""
    recorded = _recorded_digests()
    if name not in recorded:
        raise AuditError(f"{name} is not listed in {SOURCES}", location=Location(file=str(CONTENT / SOURCES)))
    path = CONTENT / name
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise AuditError(f"cannot read {path}: {exc.strerror}", hint="reinstall aifactory") from None
    if digest != recorded[name]:
        raise AuditError(
            f"{path} is not the file aifactory shipped (its SHA-256 is {digest}, not {recorded[name]})",
            code="content-digest",
            location=Location(file=str(path)),
            hint="reinstall aifactory; never edit the shipped catalog",
        )
    return path


@cache
def _recorded_digests() -> dict[str, str]:
    path = CONTENT / SOURCES
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(f["file"]): str(f["sha256"]) for f in data["files"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"cannot read {path}: {exc}", location=Location(file=str(path))) from None


def _walk(controls: list[dict[str, Any]], family: str, parent: str, out: dict[str, CatalogControl]) -> None:
    for control in controls:
        props = control.get("props") or []
        label = next(
            (p["value"] for p in props if p.get("name") == "label" and not p.get("class")),
            control["id"].upper(),
        )
        status = next((p.get("value") for p in props if p.get("name") == "status"), "")
        title = f"{parent} | {control['title']}" if parent else str(control["title"])
        out[control["id"]] = CatalogControl(control["id"], label, title, family, status == "withdrawn")
        _walk(control.get("controls") or [], family, str(control["title"]), out)


@cache
def load_catalog() -> Catalog:
    """The shipped NIST catalog, indexed by control id (read once per process)."""
    path = content_file(CATALOG)
    raw = path.read_bytes()
    catalog = json.loads(raw)["catalog"]
    controls: dict[str, CatalogControl] = {}
    families = {}
    for group in catalog.get("groups") or []:
        families[group["id"]] = group["title"]
        _walk(group.get("controls") or [], group["id"], "", controls)
    metadata = catalog["metadata"]
    return Catalog(
        str(metadata["title"]),
        str(metadata["version"]),
        hashlib.sha256(raw).hexdigest(),
        controls,
        families,
    )


def moderate_baseline() -> tuple[str, ...]:
    """The controls (as AC-2, SC-28(1)) the shipped profile selects, in catalog order."""
    profile = json.loads(content_file(PROFILE).read_text(encoding="utf-8"))["profile"]
    ids = [c for imp in profile["imports"] for sel in imp["include-controls"] for c in sel["with-ids"]]
    catalog = load_catalog()
    return tuple(catalog.resolve(i).label for i in ids)


def catalog_resource(catalog: Catalog) -> dict[str, Any]:
    """A back-matter resource naming the catalog: NIST's address and the shipped copy's digest."""
    return {
        "uuid": content_uuid("catalog", catalog.sha256),
        "title": catalog.title,
        "props": [{"name": "version", "value": catalog.version}],
        "rlinks": [
            {  # first: tools (compliance-trestle) resolve the first link, and this one needs no network
                "href": CATALOG,
                "media-type": "application/oscal.catalog+json",
                "hashes": [{"algorithm": "SHA-256", "value": catalog.sha256}],
            },
            {
                "href": NIST_CATALOG_URL,
                "media-type": "application/oscal.catalog+json",
                "hashes": [{"algorithm": "SHA-256", "value": catalog.sha256}],
            },
        ],
        "remarks": f"aifactory ships this catalog as aifactory/audit/oscal_content/{CATALOG} (where "
        "it came from, with digests: SOURCES.json beside it); NIST publishes it at the second link.",
    }


def build_profile() -> dict[str, Any]:
    """The moderate baseline profile aifactory ships (see the module's docstring)."""
    catalog = load_catalog()
    selected = sorted(MODERATE_BASELINE, key=sort_key)
    resource = catalog_resource(catalog)
    return {
        "profile": {
            "uuid": content_uuid("profile", "moderate", *selected),
            "metadata": {
                "title": "NIST SP 800-53 Rev 5 MODERATE baseline: the controls aifactory implements",
                "last-modified": PROFILE_DATE,
                "version": "1",
                "oscal-version": OSCAL_VERSION,
                "remarks": "Selected by aifactory from SP 800-53B's moderate baseline: only the baseline "
                "controls aifactory implements. This is not NIST's moderate baseline profile, which "
                "selects every moderate control.",
            },
            "imports": [
                {
                    "href": f"#{resource['uuid']}",
                    "include-controls": [{"with-ids": [catalog.resolve(c).id for c in selected]}],
                }
            ],
            "merge": {"as-is": True},
            "back-matter": {"resources": [resource]},
        }
    }


def profile_bytes() -> bytes:
    return json.dumps(build_profile(), indent=1, ensure_ascii=False).encode() + b"\n"
