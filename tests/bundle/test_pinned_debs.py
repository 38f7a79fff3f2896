"""Packages pinned from another Debian release (the SCAP content): fetched by URL, checked by SHA-256,
recorded with their origin in the SBOM, and pinned identically in scripts/setup.sh.

The fetch is exercised through file:// URLs (urllib's own file handler), so no test leaves the machine.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from aifactory.bundle import apt, sbom
from aifactory.errors import BundleError

ROOT = Path(__file__).resolve().parents[2]


def _pin(source: Path, sha256: str) -> apt.PinnedDeb:
    return apt.PinnedDeb("demo", "1.0-1", "debian-13", source.as_uri(), sha256)


def test_pinned_deb_is_fetched_and_checked(tmp_path: Path) -> None:
    source = tmp_path / "archive" / "demo_1.0-1_all.deb"
    source.parent.mkdir()
    source.write_bytes(b"not really a deb, but bytes with a known digest")
    pin = _pin(source, hashlib.sha256(source.read_bytes()).hexdigest())
    (fetched,) = apt.fetch_pinned([pin], cache=tmp_path / "cache")
    assert fetched.read_bytes() == source.read_bytes()
    source.unlink()  # a second build uses the cache
    assert apt.fetch_pinned([pin], cache=tmp_path / "cache") == [fetched]


def test_pinned_deb_with_another_digest_is_refused_and_not_kept(tmp_path: Path) -> None:
    source = tmp_path / "demo_1.0-1_all.deb"
    source.write_bytes(b"the archive changed under a pinned version")
    with pytest.raises(BundleError, match="not the pinned") as raised:
        apt.fetch_pinned([_pin(source, "0" * 64)], cache=tmp_path / "cache")
    assert raised.value.code == "apt-pin-mismatch"
    assert list((tmp_path / "cache").iterdir()) == []


def test_pinned_closure_brings_what_a_pin_depends_on() -> None:
    names = [p.name for p in apt.pinned_closure(apt.ROLE_PACKAGES)]
    assert names == ["ssg-base", "ssg-debian"]


def test_setup_script_pins_the_same_packages() -> None:
    text = (ROOT / "scripts" / "setup.sh").read_text()
    pinned = {m[0]: (m[1], m[2]) for m in re.findall(r'^\s+"(ssg-[a-z]+) (\S+) ([0-9a-f]{64})"$', text, re.M)}
    assert pinned == {p.name: (p.version, p.sha256) for p in apt.PINNED_DEBS.values()}


def test_sbom_records_a_pinned_packages_origin() -> None:
    pin = apt.PINNED_DEBS["ssg-debian"]
    component = sbom.Component(
        "deb",
        "apt/" + pin.file_name,
        pin.sha256,
        1,
        pin.name,
        pin.version,
        "all",
        origin=sbom.Origin(pin.url, pin.distro),
    ).as_cyclonedx()
    assert component["purl"] == "pkg:deb/debian/ssg-debian@0.1.76-1?arch=all&distro=debian-13"
    assert component["externalReferences"] == [{"type": "distribution", "url": pin.url}]
