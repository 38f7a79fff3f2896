"""The bundle's SBOM: licenses and the dependency graph read from real package files (wheels
written as pip writes them, .debs built with the stock dpkg-deb, a collection tarball), and the
result passes CycloneDX's strict JSON schema validation (cyclonedx-python-lib)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from aifactory.bundle.sbom import Component, describe, render

DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: alpha

Files: *
Copyright: 2026 Alpha authors
License: GPL-2+
 This program is free software.

Files: debian/*
Copyright: 2026 Debian
License: MIT
 Permission is hereby granted.
"""
FREE_FORM = """This is beta, packaged for Debian.
It is licensed under the GNU General Public License version 2; on Debian systems see
/usr/share/common-licenses/GPL-2.
"""


def _wheel(folder: Path, name: str, version: str, headers: list[str]) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    metadata = "\n".join(["Metadata-Version: 2.4", f"Name: {name}", f"Version: {version}", *headers]) + "\n"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}/__init__.py", "")
        wheel.writestr(f"{name}-{version}.dist-info/METADATA", metadata)
        wheel.writestr(f"{name}-{version}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n")
        wheel.writestr(f"{name}-{version}.dist-info/RECORD", "")
    return path


def _deb(folder: Path, package: str, depends: str, copyright_text: str) -> Path:
    root = folder / f"{package}-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: Test <t@example.org>\n"
        + (f"Depends: {depends}\n" if depends else "")
        + f"Description: {package} for the SBOM test\n"
    )
    doc = root / "usr" / "share" / "doc" / package
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(copyright_text)
    target = folder / f"{package}_1.0-1_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(root), str(target)], check=True, capture_output=True
    )
    return target


def _collection(folder: Path) -> Path:
    target = folder / "labextra-tools-1.0.0.tar.gz"
    info = {
        "collection_info": {
            "namespace": "labextra",
            "name": "tools",
            "version": "1.0.0",
            "license": ["GPL-3.0-or-later"],
            "dependencies": {"aifactory.factory": "*"},
        }
    }
    body = json.dumps(info).encode()
    with tarfile.open(target, "w:gz") as tar:
        member = tarfile.TarInfo("MANIFEST.json")
        member.size = len(body)
        tar.addfile(member, io.BytesIO(body))
    return target


@pytest.fixture(scope="module")
def sbom(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("needs dpkg-deb (Debian's dpkg)")
    folder = tmp_path_factory.mktemp("sbom")
    files = {
        "wheels/alpha-1.0-py3-none-any.whl": (
            "wheel",
            "alpha",
            "1.0",
            None,
            _wheel(
                folder,
                "alpha",
                "1.0",
                [
                    "License-Expression: Apache-2.0",
                    "Requires-Dist: Beta_Lib>=2",
                    "Requires-Dist: gamma; extra == 'docs'",
                    "Requires-Dist: delta; python_version < '3'",
                ],
            ),
        ),
        "wheels/beta_lib-2.0-py3-none-any.whl": (
            "wheel",
            "beta_lib",
            "2.0",
            None,
            _wheel(
                folder,
                "beta_lib",
                "2.0",
                [
                    "Classifier: License :: OSI Approved :: BSD License",
                    "Requires-Dist: missing-from-bundle",
                ],
            ),
        ),
        "apt/alpha_1.0-1_all.deb": (
            "deb",
            "alpha",
            "1.0-1",
            "all",
            _deb(folder, "alpha", "beta | gamma (>= 2), libnothere", DEP5),
        ),
        "apt/beta_1.0-1_all.deb": ("deb", "beta", "1.0-1", "all", _deb(folder, "beta", "", FREE_FORM)),
        "collections/labextra-tools-1.0.0.tar.gz": (
            "collection",
            "tools",
            "1.0.0",
            "labextra",
            _collection(folder),
        ),
        "files/model.safetensors": ("file", "model.safetensors", None, None, folder / "model.safetensors"),
    }
    (folder / "model.safetensors").write_bytes(b"weights")
    components = [
        Component(kind, path, "0" * 64, source.stat().st_size, name, version, extra, describe(kind, source))
        for path, (kind, name, version, extra, source) in files.items()
    ]
    first = render(
        site="lab", version="1", timestamp=1_700_000_000, aifactory_version="0.1.0", components=components
    )
    again = render(
        site="lab",
        version="1",
        timestamp=1_700_000_000,
        aifactory_version="0.1.0",
        components=list(reversed(components)),
    )
    assert first == again  # the same inputs give the same bytes
    return {"text": first.decode(), "json": json.loads(first)}


def test_strict_cyclonedx_validation(sbom: dict) -> None:
    errors = JsonStrictValidator(SchemaVersion.V1_5).validate_str(sbom["text"])
    assert errors is None, errors


def test_licenses_come_from_the_packages(sbom: dict) -> None:
    listed = {c["bom-ref"]: c.get("licenses") for c in sbom["json"]["components"]}
    assert listed["wheels/alpha-1.0-py3-none-any.whl"] == [{"expression": "Apache-2.0"}]
    assert listed["wheels/beta_lib-2.0-py3-none-any.whl"] == [{"license": {"name": "BSD License"}}]
    assert listed["apt/alpha_1.0-1_all.deb"] == [
        {"license": {"name": "GPL-2+"}},
        {"license": {"name": "MIT"}},
    ]
    assert listed["apt/beta_1.0-1_all.deb"] == [{"license": {"name": "GPL-2"}}]
    assert listed["collections/labextra-tools-1.0.0.tar.gz"] == [{"expression": "GPL-3.0-or-later"}]
    assert listed["files/model.safetensors"] is None


def test_the_dependency_graph_holds_what_the_bundle_carries(sbom: dict) -> None:
    graph = {d["ref"]: d["dependsOn"] for d in sbom["json"]["dependencies"]}
    refs = {c["bom-ref"] for c in sbom["json"]["components"]}
    root = sbom["json"]["metadata"]["component"]["bom-ref"]
    assert set(graph) == refs | {root} and set(graph[root]) == refs
    # Requires-Dist by canonical name; extras and markers false on CPython 3.11 Linux left out
    assert graph["wheels/alpha-1.0-py3-none-any.whl"] == ["wheels/beta_lib-2.0-py3-none-any.whl"]
    assert graph["wheels/beta_lib-2.0-py3-none-any.whl"] == []  # its dependency is not in the bundle
    assert graph["apt/alpha_1.0-1_all.deb"] == ["apt/beta_1.0-1_all.deb"]  # "beta | gamma": beta is carried
    assert graph["files/model.safetensors"] == []


def test_a_wheel_without_license_headers_is_named_by_its_license_file(tmp_path: Path) -> None:
    """Core metadata 2.4 may say only `License-File:` (sigstore-models 0.0.6 does): the file names it."""
    from aifactory.bundle.sbom import describe_wheel

    named = _wheel(tmp_path, "gamma", "0.1", ["License-File: LICENSE"])
    with zipfile.ZipFile(named, "a") as wheel:
        wheel.writestr(
            "gamma-0.1.dist-info/licenses/LICENSE", "\n  MIT License\n\nCopyright (c) 2025 Gamma\n"
        )
    assert describe_wheel(named).licenses.as_cyclonedx() == [
        {"license": {"name": "MIT License (from the wheel's license file)"}}
    ]
    named_but_missing = _wheel(tmp_path, "delta", "0.1", ["License-File: LICENSE"])
    assert describe_wheel(named_but_missing).licenses.as_cyclonedx() == []
