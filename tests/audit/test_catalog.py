"""The shipped NIST catalog and moderate baseline profile: their digests match SOURCES.json (checked
with the stock sha256sum too), a changed file fails closed, the profile is what controls.py
generates, both validate (trestle and NIST's schema), and every control aifactory names resolves."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from oscal_schema import schema_errors
from trestle.oscal.catalog import Catalog as TrestleCatalog
from trestle.oscal.profile import Profile as TrestleProfile

from aifactory.audit import catalog as catalog_module
from aifactory.audit.catalog import CATALOG, CONTENT, PROFILE, SOURCES, load_catalog, moderate_baseline
from aifactory.audit.controls import IMPLEMENTATIONS, MODERATE_BASELINE, PARTS, ROLES, TITLES
from aifactory.errors import AuditError


def test_every_shipped_file_matches_its_recorded_digest() -> None:
    sources = json.loads((CONTENT / SOURCES).read_text())
    listed = {f["file"] for f in sources["files"]}
    shipped = {str(p.relative_to(CONTENT)) for p in CONTENT.rglob("*.json") if p.name != SOURCES}
    assert listed == shipped
    lines = "".join(f"{f['sha256']}  {f['file']}\n" for f in sources["files"])
    done = subprocess.run(
        ["sha256sum", "--check", "--strict", "-"], input=lines, cwd=CONTENT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for entry in sources["files"]:
        assert entry["license"] and entry["source"], entry["file"]


def test_a_changed_catalog_fails_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = Path(shutil.copytree(CONTENT, tmp_path / "content"))
    path = copy / CATALOG
    path.write_bytes(path.read_bytes().replace(b'"Account Management"', b'"Account Managemant"', 1))
    monkeypatch.setattr(catalog_module, "CONTENT", copy)
    load_catalog.cache_clear()
    try:
        with pytest.raises(AuditError, match="is not the file aifactory shipped"):
            load_catalog()
    finally:
        load_catalog.cache_clear()


def test_the_catalog_is_nists_rev5() -> None:
    catalog = load_catalog()
    assert "SP 800-53 Rev 5" in catalog.title
    assert len(catalog.families) == 20 and len(catalog.controls) > 1000
    assert catalog.resolve("SC-28(1)").title == "Protection of Information at Rest | Cryptographic Protection"
    assert catalog.resolve("ac-2.3").label == "AC-2(3)"
    with pytest.raises(AuditError, match="not in the NIST"):
        catalog.resolve("ZZ-99")


def test_the_profile_is_generated_from_the_control_model() -> None:
    shipped = (CONTENT / PROFILE).read_bytes()
    assert shipped == catalog_module.profile_bytes(), "run scripts/oscal_profile.py"
    assert set(moderate_baseline()) == MODERATE_BASELINE


def test_catalog_and_profile_validate() -> None:
    TrestleCatalog.oscal_read(CONTENT / CATALOG)
    TrestleProfile.oscal_read(CONTENT / PROFILE)
    assert schema_errors(json.loads((CONTENT / PROFILE).read_text())) == []
    assert schema_errors(json.loads((CONTENT / CATALOG).read_text())) == []


def test_every_control_aifactory_names_resolves_with_its_title() -> None:
    catalog = load_catalog()
    for control_id in {*TITLES, *IMPLEMENTATIONS, *MODERATE_BASELINE}:
        found = catalog.resolve(control_id)
        assert not found.withdrawn, control_id
        if control_id in TITLES:
            assert TITLES[control_id] == found.title, control_id
    assert MODERATE_BASELINE <= set(IMPLEMENTATIONS)
    for control_id, implementation in IMPLEMENTATIONS.items():
        assert implementation.statement and implementation.parts and implementation.roles, control_id
        assert set(implementation.parts) <= set(PARTS) and set(implementation.roles) <= set(ROLES)
