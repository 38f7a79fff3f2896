"""The lab site's real bundle: reproducible, checkable with stock tools, complete enough to install
the runtime on a machine with no network and no other package source."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from aifactory import signing
from aifactory.bundle import BuildResult, build_bundle, current_import, import_bundle, verify_bundle
from aifactory.bundle.manifest import MANIFEST, SIGNATURE, SUMS
from aifactory.bundle.sbom import SBOM_PATH
from aifactory.plan import plan_site
from aifactory.state import SiteState

from .conftest import IDENTITY, LAB_SITE, REPO, Extras, Signer, lab_options

pytestmark = pytest.mark.slow


def member_bytes(bundle: Path, name: str) -> bytes:
    with tarfile.open(bundle) as tar:
        handle = tar.extractfile(name)
        assert handle is not None
        return handle.read()


def names(bundle: Path) -> list[str]:
    with tarfile.open(bundle) as tar:
        return tar.getnames()


def test_the_bundle_carries_what_an_air_gapped_site_needs(lab_bundle: BuildResult) -> None:
    bundle = lab_bundle.parts[0]
    listed = names(bundle)
    manifest = json.loads(member_bytes(bundle, MANIFEST))
    assert {MANIFEST, SIGNATURE, SUMS, "plan.json", SBOM_PATH} <= set(listed)
    wheels = [n for n in listed if n.startswith("wheels/")]
    for project in (
        "aifactory-",
        "torch-",
        "safetensors-",
        "numpy-",
        "ansible_core-",
        "ansible_runner-",
        "gordon_to_regorus-",
        "cryptography-",
        "pydantic-",
    ):
        assert any(n.startswith(f"wheels/{project}") for n in wheels), project
    assert "collections/aifactory-factory-0.1.0.tar.gz" in listed
    assert "collections/labextra-tools-1.0.0.tar.gz" in listed and "files/vitals-mlp.safetensors" in listed
    assert any(n.startswith("policies/") for n in listed)
    assert any(n.startswith("apt/slurmd_") for n in listed) and "apt/Packages" in listed
    assert manifest["site"] == "lab" and manifest["version"] == "20251122.082640"
    assert manifest["plan_digest"] == plan_site(REPO / LAB_SITE, write_lock=False).plan.digest()
    assert json.loads(member_bytes(bundle, "plan.json"))["site"]["name"] == "lab"
    assert set(manifest["contents"]["wheelsets"]) == {
        "runtime/debian-12-x86_64-py3.11",
        "control/debian-12-x86_64-py3.11",
    }
    assert not any("torch" in w for w in manifest["contents"]["wheelsets"]["control/debian-12-x86_64-py3.11"])


def test_two_builds_from_the_same_inputs_are_byte_identical(
    lab_bundle: BuildResult, signer: Signer, source_snapshot: Path, extras: Extras, tmp_path: Path
) -> None:
    again = build_bundle(
        plan_site(source_snapshot / LAB_SITE, write_lock=False),
        output=tmp_path / "again.tar",
        options=lab_options(signer, source_snapshot, extras),
    )
    first, second = lab_bundle.parts[0], again.parts[0]
    hashes = [
        {f["path"]: f["sha256"] for f in json.loads(member_bytes(b, MANIFEST))["files"]}
        for b in (first, second)
    ]
    assert [p for p in hashes[0] if hashes[0][p] != hashes[1].get(p)] == []
    collection = "collections/aifactory-factory-0.1.0.tar.gz"
    assert member_bytes(first, collection) == member_bytes(second, collection)
    assert member_bytes(first, SBOM_PATH) == member_bytes(second, SBOM_PATH)
    assert member_bytes(first, MANIFEST) == member_bytes(second, MANIFEST)
    assert first.read_bytes() == second.read_bytes()
    assert again.digest == lab_bundle.digest


def test_collection_tarball_is_normalized(lab_bundle: BuildResult, tmp_path: Path) -> None:
    tarball = tmp_path / "collection.tar.gz"
    tarball.write_bytes(member_bytes(lab_bundle.parts[0], "collections/aifactory-factory-0.1.0.tar.gz"))
    assert tarball.read_bytes()[4:8] == b"\x00\x00\x00\x00"  # gzip header mtime 0
    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(1_763_800_000, 0, 0, "", "")}
    assert "MANIFEST.json" in {m.name for m in members}
    assert any(m.name.startswith("roles/") for m in members)


def test_ssh_keygen_verifies_the_manifest_signature(
    lab_bundle: BuildResult, signer: Signer, tmp_path: Path
) -> None:
    (tmp_path / MANIFEST).write_bytes(member_bytes(lab_bundle.parts[0], MANIFEST))
    (tmp_path / SIGNATURE).write_bytes(member_bytes(lab_bundle.parts[0], SIGNATURE))
    done = signing.ssh_keygen_verify(
        tmp_path / MANIFEST,
        tmp_path / SIGNATURE,
        allowed_signers=signer.allowed_signers,
        identity=IDENTITY,
        namespace="aifactory-bundle",
    )
    assert done.returncode == 0, done.stderr
    assert f'Good "aifactory-bundle" signature for {IDENTITY}' in done.stdout + done.stderr


def test_sha256sum_checks_the_unpacked_tree(lab_bundle: BuildResult, tmp_path: Path) -> None:
    subprocess.run(["tar", "-xf", str(lab_bundle.parts[0]), "-C", str(tmp_path)], check=True)
    done = subprocess.run(["sha256sum", "--strict", "-c", SUMS], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert done.stdout.count(": OK") == lab_bundle.files + 1  # every payload file and the manifest
    wheel = next((tmp_path / "wheels").glob("torch-*.whl"))
    with wheel.open("r+b") as handle:
        handle.seek(1000)
        handle.write(b"\xff")
    done = subprocess.run(["sha256sum", "-c", "--quiet", SUMS], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 1 and f"wheels/{wheel.name}: FAILED" in done.stdout


def test_sbom_is_cyclonedx_and_lists_every_file(lab_bundle: BuildResult) -> None:
    bundle = lab_bundle.parts[0]
    sbom = json.loads(member_bytes(bundle, SBOM_PATH))
    manifest = json.loads(member_bytes(bundle, MANIFEST))
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.5"
    assert sbom["serialNumber"].startswith("urn:uuid:")
    assert sbom["metadata"]["timestamp"] == "2025-11-22T08:26:40Z"
    listed = {c["bom-ref"]: c for c in sbom["components"]}
    expected = {f["path"]: f["sha256"] for f in manifest["files"] if f["path"] != SBOM_PATH}
    assert {ref: c["hashes"][0]["content"] for ref, c in listed.items()} == expected
    torch = next(c for c in listed.values() if c["name"] == "torch")
    assert torch["purl"].startswith("pkg:pypi/torch@2.13.0")
    assert any(c.get("purl", "").startswith("pkg:deb/debian/slurmd@") for c in listed.values())
    assert any(c.get("group") == "aifactory" and c["name"] == "factory" for c in listed.values())
    assert listed["collections/labextra-tools-1.0.0.tar.gz"]["purl"] == (
        "pkg:generic/ansible-collection/labextra.tools@1.0.0"
    )
    assert listed["files/vitals-mlp.safetensors"]["type"] == "file"
    # every package names its licenses; the graph covers every component and links torch to its needs
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(json.dumps(sbom)) is None
    packages = [c for c in listed.values() if c["type"] == "library"]
    assert packages and all(c.get("licenses") for c in packages), [
        c["name"] for c in packages if not c.get("licenses")
    ]
    graph = {d["ref"]: d["dependsOn"] for d in sbom["dependencies"]}
    assert set(listed) <= set(graph)
    torch_ref = next(ref for ref, c in listed.items() if c["name"] == "torch")
    assert any(
        listed[r]["name"] in ("numpy", "filelock", "sympy", "typing_extensions") for r in graph[torch_ref]
    )
    slurmd = next(ref for ref, c in listed.items() if c["name"] == "slurmd")
    assert graph[slurmd], "slurmd depends on packages the bundle carries"


def test_verify_hashes_everything_and_names_the_signer(lab_bundle: BuildResult, signer: Signer) -> None:
    report = verify_bundle(lab_bundle.parts[0], trust=signer.allowed_signers, check_rollback=False)
    assert report.signer == IDENTITY and report.files == lab_bundle.files
    assert report.digest == lab_bundle.digest and report.payload_bytes > 100 * 1024**2


def _can_unshare_network() -> bool:
    return (
        shutil.which("unshare") is not None
        and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    )


def _base_python() -> str:
    return getattr(sys, "_base_executable", None) or sys.executable


@pytest.mark.skipif(not _can_unshare_network(), reason="needs `unshare -n` (root or user namespaces)")
def test_runtime_installs_from_the_imported_bundle_with_no_network(
    lab_bundle: BuildResult, signer: Signer, tmp_path: Path
) -> None:
    state = SiteState.for_site("lab", home=tmp_path / "state")
    imported = import_bundle(
        lab_bundle.parts[0], trust=signer.allowed_signers, site_state=state, home=tmp_path / "bundles"
    )
    assert current_import(state) == imported
    subprocess.run(["sha256sum", "--quiet", "-c", SUMS], cwd=imported.root, check=True)
    unpacked = imported.collections_path / "ansible_collections" / "aifactory" / "factory"
    assert (unpacked / "MANIFEST.json").is_file() and (unpacked / "roles").is_dir()
    extra = imported.collections_path / "ansible_collections" / "labextra" / "tools"
    assert (extra / "roles" / "hello" / "tasks" / "main.yml").is_file()
    assert (imported.files_path / "vitals-mlp.safetensors").is_file()
    venv = tmp_path / "venv"
    isolated = [
        "unshare",
        "-n",
        "env",
        "-i",
        "PATH=/usr/bin:/bin",
        "PIP_CONFIG_FILE=/dev/null",
        f"HOME={tmp_path}",
    ]
    subprocess.run([*isolated, _base_python(), "-m", "venv", str(venv)], check=True, capture_output=True)
    install = subprocess.run(
        [
            *isolated,
            str(venv / "bin" / "pip"),
            "install",
            "--isolated",
            "--no-index",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-compile",
            "--find-links",
            str(imported.wheelhouse),
            "aifactory[runtime]",
        ],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    probe = (
        "import aifactory, torch, safetensors, regorus; "
        "print(aifactory.__file__); print(torch.__version__); print(torch.ones(2).sum().item())"
    )
    done = subprocess.run(
        [*isolated, str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    where, version, total = done.stdout.split()
    assert where.startswith(str(venv)) and version.startswith("2.13.0") and total == "2.0"
    assert "network is unreachable" not in install.stdout.lower()
