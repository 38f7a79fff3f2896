"""The bundle role with real ansible-playbook: the payload comes once from the site store, or over SSH.

Two inventory hosts on this machine (local connection; `ctl` is the control host, `node` another
host), each with its own bundle folder. The site store is a folder bind-mounted onto itself, so that
`mountpoint` sees a mounted storage as on a real host (root only, as the tests run). What is checked:
- the control host puts the payload on the store once and the other host unpacks it from there (its
  copy over SSH skipped), both verify it, and a second run changes nothing;
- a store the host has not mounted: the payload comes over SSH as before;
- a payload on the store that does not match the signed manifest is refused and nothing is kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible_env import ansible_env

from aifactory import signing
from aifactory.deploy.payload import STORE_FOLDER, WHEELS, host_payloads
from aifactory.plan import plan_site

REPO = Path(__file__).resolve().parents[2]
LAB_SPEC = REPO / "inventory" / "lab" / "site.yaml"
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
IDENTITY = "release@roletest.example"
VERSION = "1.0"
FILES = {"plan.json": b'{"name": "roletest"}', "wheels/aifactory-1.0-py3-none-any.whl": b"wheel bytes" * 1000}
PLAYBOOK = """\
- name: bundle role
  hosts: all
  gather_facts: false
  roles:
    - role: bundle
"""


def _signed_bundle(folder: Path) -> tuple[Path, dict[str, Any], Path, str]:
    """An imported bundle's folder (files, signed manifest), its manifest, allowed_signers, digest."""
    keys = signing.generate_keypair(folder / "key", identity=IDENTITY, namespaces="aifactory-bundle")
    root = folder / "imported"
    files = []
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        files.append({"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
    manifest = {"files": files, "contents": {}}
    text = json.dumps(manifest, sort_keys=True).encode()
    (root / "manifest.json").write_bytes(text)
    signature = signing.sign(text, signing.load_private_key(keys.private), "aifactory-bundle")
    (root / "manifest.json.sig").write_text(signature)
    return root, manifest, keys.allowed_signers, "sha256:" + hashlib.sha256(text).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    """A folder mounted onto itself: a mount point, as a storage mount is on a host."""
    if os.geteuid() != 0:
        pytest.fail("the bundle role test mounts a folder: run the tests as root, as CI does")
    mount = tmp_path / "share"
    mount.mkdir()
    subprocess.run(["mount", "--bind", str(mount), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _inventory(
    tmp_path: Path, store_mount: Path, *, node_mount: Path | None = None, ctl_mount: Path | None = None
):
    root, manifest, allowed, digest = _signed_bundle(tmp_path / "bundle")
    plan = plan_site(LAB_SPEC, write_lock=False).plan
    payloads = host_payloads(tmp_path / "payload", root, VERSION, digest, manifest, plan)
    assert list(payloads) == [WHEELS]
    bundle = {
        "version": VERSION,
        "digest": digest,
        "identity": IDENTITY,
        "allowed_signers": str(allowed),
        "payloads": {k: p.inventory_vars() for k, p in payloads.items()},
        "site_store": {"storage": "share", "folder": STORE_FOLDER},
        "apt": False,
    }

    def host(name: str, mount: Path) -> dict[str, Any]:
        return {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "bundle_root": str(tmp_path / f"{name}-bundle"),
            "aifactory_mounts": [{"storage": "share", "path": str(mount)}],
        }

    inventory = {
        "all": {
            "vars": {
                "aifactory_bundle": bundle,
                "aifactory_control_host": "ctl",
                "aifactory_packages_preinstalled": True,
                "aifactory_platform": {"os": "debian-12", "arch": "x86_64", "python": "3.11"},
            },
            "hosts": {
                "ctl": host("ctl", ctl_mount or store_mount),
                "node": host("node", node_mount or store_mount),
            },
        }
    }
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(inventory))
    return path, payloads[WHEELS]


def _run(tmp_path: Path, inventory: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    env = ansible_env(tmp_path)
    done = subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", str(inventory), str(playbook), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    return done.returncode, _report(done.stdout)


def _report(stdout: str) -> dict[str, Any]:
    """From the default callback's output: {"tasks": {name: {host: status line}}, "changed": {host: n},
    "text": stdout}. A status line is `ok`, `changed`, `skipping` or `fatal` with what follows."""
    tasks: dict[str, dict[str, str]] = {}
    current = ""
    for line in stdout.splitlines():
        heading = re.match(r"^TASK \[(?:[^:\]]+ : )?(.+?)\] \*+$", line)
        if heading:
            current = heading.group(1)
            continue
        status = re.match(r"^(ok|changed|skipping|fatal|failed): \[([^\]]+)\](.*)$", line)
        if status and current:
            tasks.setdefault(current, {})[status.group(2).split(" -> ")[0]] = status.group(1) + status.group(
                3
            )
    changed = {
        m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)", stdout, re.M)
    }
    return {"tasks": tasks, "changed": changed, "text": stdout}


def _task(report: dict[str, Any], name: str) -> dict[str, str]:
    """host -> status line of the task named `name` (its last occurrence)."""
    found: dict[str, str] = report["tasks"].get(name, {})
    return found


def _verified(tmp_path: Path, host: str) -> bool:
    return any((tmp_path / f"{host}-bundle" / VERSION).glob(".verified-*"))


SSH_COPY = "Bundle | install | copy the payload over SSH (not on the site store)"


def test_the_payload_goes_once_to_the_store_and_hosts_unpack_it_from_there(
    tmp_path: Path, store: Path
) -> None:
    inventory, payload = _inventory(tmp_path, store)
    status, report = _run(tmp_path, inventory)
    assert status == 0, report["text"][-3000:]
    on_store = store / STORE_FOLDER / payload.file.name
    assert on_store.read_bytes() == payload.file.read_bytes()
    put = _task(report, "Bundle | store | this version's payloads")
    assert list(put) == ["ctl"] and put["ctl"].startswith("changed"), put  # once, by the control host
    copied = _task(report, SSH_COPY)
    assert sorted(copied) == ["ctl", "node"] and all(r.startswith("skipping") for r in copied.values()), (
        copied
    )
    for host in ("ctl", "node"):
        assert _verified(tmp_path, host)
        assert (tmp_path / f"{host}-bundle" / VERSION / "wheels").is_dir()
        assert not (tmp_path / f"{host}-bundle" / f"{VERSION}.tar").exists()
    status, again = _run(tmp_path, inventory)
    assert status == 0
    assert again["changed"] == {"ctl": 0, "node": 0}, again["text"][-3000:]
    assert not _task(again, "Bundle | store | this version's payloads")


def test_a_host_without_the_store_mounted_gets_the_payload_over_ssh(tmp_path: Path, store: Path) -> None:
    unmounted = tmp_path / "not-mounted"
    unmounted.mkdir()
    inventory, _ = _inventory(tmp_path, store, node_mount=unmounted)
    status, report = _run(tmp_path, inventory)
    assert status == 0, report["text"][-3000:]
    copied = _task(report, SSH_COPY)
    assert copied["ctl"].startswith("skipping") and copied["node"].startswith("changed"), copied
    assert _verified(tmp_path, "node") and _verified(tmp_path, "ctl")
    assert not (tmp_path / "node-bundle" / f"{VERSION}.tar").exists()


def test_a_payload_on_the_store_that_does_not_verify_is_refused(tmp_path: Path, store: Path) -> None:
    elsewhere = tmp_path / "control-not-mounted"  # the control host does not write the store here
    elsewhere.mkdir()
    inventory, payload = _inventory(tmp_path, store, ctl_mount=elsewhere)
    tampered = store / STORE_FOLDER / payload.file.name
    tampered.parent.mkdir(parents=True)
    data = payload.file.read_bytes().replace(b"wheel bytes", b"WHEEL BYTES", 1)
    assert data != payload.file.read_bytes()
    tampered.write_bytes(data)
    status, report = _run(tmp_path, inventory, "--limit", "node")
    assert status != 0
    failed = _task(report, "Bundle | install | stop with the reason")
    assert failed["node"].startswith("fatal") and "did not verify on node" in failed["node"], failed
    assert not (tmp_path / "node-bundle" / VERSION).exists()
