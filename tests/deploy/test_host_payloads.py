"""What each host receives from the imported bundle (aifactory.deploy.payload), and where it fetches it.

A host of a platform with a prebuilt runtime tree gets the tree and never the wheelhouse; a host of a
platform without one gets the wheelhouse; nobody gets the files only the control host reads. The site
store is the storage the control host shares with the most hosts, or none. The bundle role that
unpacks a payload (from the store, or sent over SSH) runs on the lab (tests/deploy/test_deploy_lab.py)
and in tests/deploy/test_bundle_role.py.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from aifactory.deploy.imported_bundle import DeployBundle
from aifactory.deploy.payload import (
    STORE_FOLDER,
    WHEELS,
    host_payloads,
    payload_sets,
    platform_tag,
    site_store,
)
from aifactory.inventory.render import Unsafe
from aifactory.plan import plan_site
from aifactory.plan.model import SitePlan

REPO = Path(__file__).resolve().parents[2]
LAB_SPEC = REPO / "inventory" / "lab" / "site.yaml"
TREE = "runtime/" + "a" * 64
OTHER_TREE = "runtime/" + "b" * 64
FILES = {
    "plan.json": b"{}",
    "apt/Packages": b"Package: chrony\n",
    "wheels/torch-2.13.0-cp311-none-linux_x86_64.whl": b"wheel",
    "wheels/aifactory-1.0-py3-none-any.whl": b"own wheel",
    f"{TREE}.tar.zst": b"tree",
    f"{TREE}.files": b"listing",
    f"{OTHER_TREE}.tar.zst": b"other tree",
    f"{OTHER_TREE}.files": b"other listing",
    "policies/site.rego": b"package x",
    "collections/aifactory-factory-1.0.tar.gz": b"collection",
}


def _plan(tmp_path: Path, edit: tuple[str, str] | None = None) -> SitePlan:
    text = LAB_SPEC.read_text()
    if edit is not None:
        assert edit[0] in text
        text = text.replace(edit[0], edit[1])
    spec = tmp_path / "spec" / "site.yaml"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(text)
    return plan_site(spec, write_lock=False).plan


def _bundle_root(tmp_path: Path, trees: dict[str, str]) -> tuple[Path, dict[str, Any]]:
    root = tmp_path / "imported"
    for name, data in {"manifest.json": b"{}", "manifest.json.sig": b"sig", **FILES}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    manifest = {
        "files": [{"path": p, "sha256": "0" * 64} for p in sorted(FILES)],
        "contents": {
            "runtime_trees": {
                tag: {"archive": f"{tree}.tar.zst", "files": f"{tree}.files"} for tag, tree in trees.items()
            }
        },
    }
    return root, manifest


def _members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def test_a_host_whose_platform_has_a_tree_gets_it_and_no_wheelhouse(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    tag = platform_tag(plan.hosts[0])
    root, manifest = _bundle_root(tmp_path, {tag: TREE, "debian-12-aarch64-py3.11": OTHER_TREE})
    payloads = host_payloads(tmp_path / "payload", root, "1.0", "sha256:" + "c" * 64, manifest, plan)
    assert list(payloads) == [tag]
    members = _members(payloads[tag].file)
    assert members == [
        "manifest.json",
        "manifest.json.sig",
        "apt/Packages",
        "plan.json",
        f"{TREE}.files",
        f"{TREE}.tar.zst",
    ]
    assert payloads[tag].file.name == f"1.0-{'c' * 16}-{tag}.tar"


def test_a_bundle_without_a_tree_for_the_platform_sends_the_wheelhouse(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    root, manifest = _bundle_root(tmp_path, {"debian-12-aarch64-py3.11": OTHER_TREE})
    payloads = host_payloads(tmp_path / "payload", root, "1.0", "sha256:" + "c" * 64, manifest, plan)
    assert list(payloads) == [WHEELS]
    members = _members(payloads[WHEELS].file)
    assert [m for m in members if m.startswith("wheels/")] == sorted(
        p for p in FILES if p.startswith("wheels/")
    )
    assert not [m for m in members if m.startswith(("runtime/", "policies/", "collections/"))]


def test_pools_of_two_platforms_get_one_payload_each(tmp_path: Path) -> None:
    plan = _plan(tmp_path, ("    role: cpu\n", "    role: cpu\n    platform: {arch: aarch64}\n"))
    tags = {h.name: platform_tag(h) for h in plan.hosts}
    assert sorted(set(tags.values())) == ["debian-12-aarch64-py3.11", "debian-12-x86_64-py3.11"]
    _, manifest = _bundle_root(tmp_path, {"debian-12-x86_64-py3.11": TREE})
    sets = payload_sets(manifest, plan)
    assert list(sets) == ["debian-12-x86_64-py3.11", WHEELS]
    assert f"{TREE}.tar.zst" in sets["debian-12-x86_64-py3.11"]
    assert "wheels/" in sets[WHEELS] and not any(p.startswith("runtime/") for p in sets[WHEELS])


def test_payloads_are_reused_and_those_of_other_versions_removed(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    root, manifest = _bundle_root(tmp_path, {})
    folder = tmp_path / "payload"
    folder.mkdir()
    stale = folder / "0.9-0000000000000000.tar"
    stale.write_bytes(b"old")
    first = host_payloads(folder, root, "1.0", "sha256:" + "c" * 64, manifest, plan)[WHEELS].file
    first.write_bytes(first.read_bytes() + b"\0" * 1024)  # a reused file is not rewritten
    again = host_payloads(folder, root, "1.0", "sha256:" + "c" * 64, manifest, plan)[WHEELS].file
    assert again == first and again.read_bytes().endswith(b"\0" * 1024)
    assert sorted(p.name for p in folder.iterdir()) == [first.name]


def test_a_missing_payload_file_is_a_bundle_error(tmp_path: Path) -> None:
    from aifactory.errors import BundleError

    plan = _plan(tmp_path)
    root, manifest = _bundle_root(tmp_path, {})
    (root / "apt" / "Packages").unlink()
    with pytest.raises(BundleError, match="lacks apt/Packages"):
        host_payloads(tmp_path / "payload", root, "1.0", "sha256:" + "c" * 64, manifest, plan)
    assert not list((tmp_path / "payload").glob("*.tar"))


def test_the_site_store_is_the_storage_the_control_host_shares() -> None:
    plan = plan_site(LAB_SPEC, write_lock=False).plan
    assert site_store(plan) == {"storage": "share", "folder": STORE_FOLDER}


def test_no_site_store_when_the_control_host_mounts_no_shared_storage(tmp_path: Path) -> None:
    plan = _plan(tmp_path, ("mounted_by: [cpu, control]", "mounted_by: [cpu]"))
    assert site_store(plan) is None


def test_the_inventory_describes_the_payloads_and_the_store(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    tag = platform_tag(plan.hosts[0])
    root, manifest = _bundle_root(tmp_path, {tag: TREE})
    bundle = DeployBundle(
        "lab", "1.0", "sha256:" + "c" * 64, root, "r@lab", root / "allowed", manifest=manifest
    )
    described = bundle.inventory_vars(plan, tmp_path / "payload")
    payload = described["payloads"][tag]
    assert payload["prefixes"] == ["plan.json", "apt/", f"{TREE}.tar.zst", f"{TREE}.files"]
    assert Path(payload["file"]).is_file() and payload["name"] == Path(payload["file"]).name
    assert described["site_store"] == {"storage": "share", "folder": STORE_FOLDER}
    assert isinstance(described["site_store"]["storage"], Unsafe)  # plan text, written !unsafe
    assert json.loads(json.dumps(described))["apt"] is True
    # the scan's inventory carries no payload, and writes none
    scanned = bundle.inventory_vars(plan, None)
    assert "payloads" not in scanned
