"""The host payloads of an imported bundle: what each host needs from it, and where hosts fetch it.

A host needs the signed manifest and its signature, the signed plan, the apt repository and its
runtime: the prebuilt runtime tree of its pool's platform when the bundle has one (`bundle build
--runtime-tree`), else the wheelhouse, from which the runtime role builds the venv with pip. Deploy
writes one plain tar per such set (sorted entries, fixed owner and mtime) under
<state>/deploy/payload/, named after the bundle's version and digest and the set's key (the platform
tag, or `wheels`), and reuses it in later deploys. A host of a platform with a tree never receives
the wheelhouse, nor the trees of other platforms.

The site store: when the control host and other hosts mount one of the site's storage systems, the
control host puts each payload there once (`<mount>/.aifactory/bundle-payloads/<name>.tar`) and every
host that mounts it unpacks the payload from it, so the control host sends a payload once per site,
not once per host. The bundle role checks the signature and every file's SHA-256 on the host after
unpacking, wherever the bytes came from; a host that does not find the payload there (the storage not
mounted yet, a store the control host could not write) gets it over its SSH connection as before.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.bundle.manifest import MANIFEST, SIGNATURE
from aifactory.bundle.wheelhouse import Platform
from aifactory.errors import BundleError, Location
from aifactory.inventory.render import Unsafe
from aifactory.plan.model import Host, SitePlan

PLAN = "plan.json"
WHEELS = "wheels"  # the key of the payload that carries the wheelhouse (hosts without a tree)
# What every host needs besides its runtime: the signed plan and the apt repository.
COMMON_PREFIXES = (PLAN, "apt/")
# Where on a storage mount the control host keeps the site's payloads (aifactory's own folder).
STORE_FOLDER = ".aifactory/bundle-payloads"


@dataclass(frozen=True)
class HostPayload:
    """One payload file on the control host, and the manifest paths it carries (by prefix)."""

    key: str
    file: Path
    prefixes: tuple[str, ...]

    def inventory_vars(self) -> dict[str, Any]:
        return {"file": str(self.file), "name": self.file.name, "prefixes": list(self.prefixes)}


def platform_tag(host: Host) -> str:
    """The runtime platform key of a host's pool (the manifest's contents.runtime_trees keys)."""
    return Platform.from_plan(host.platform).tag


def payload_sets(manifest: dict[str, Any], plan: SitePlan) -> dict[str, tuple[str, ...]]:
    """Key -> the manifest path prefixes of each payload the plan's hosts need."""
    trees: dict[str, Any] = dict((manifest.get("contents") or {}).get("runtime_trees") or {})
    sets: dict[str, tuple[str, ...]] = {}
    for host in plan.hosts:
        tag = platform_tag(host)
        tree = trees.get(tag)
        if tree is not None:
            sets[tag] = (*COMMON_PREFIXES, str(tree["archive"]), str(tree["files"]))
        else:
            sets[WHEELS] = (*COMMON_PREFIXES, f"{WHEELS}/")
    return dict(sorted(sets.items()))


def host_payloads(
    folder: Path, root: Path, version: str, digest: str, manifest: dict[str, Any], plan: SitePlan
) -> dict[str, HostPayload]:
    """Write (or reuse) the payload of every set the plan's hosts need; other payloads are removed."""
    folder.mkdir(mode=0o700, exist_ok=True)
    stem = f"{version}-{digest.removeprefix('sha256:')[:16]}"
    paths = sorted(str(f["path"]) for f in manifest["files"])
    payloads: dict[str, HostPayload] = {}
    for key, prefixes in payload_sets(manifest, plan).items():
        members = [p for p in paths if p.startswith(prefixes)]
        target = folder / f"{stem}-{key}.tar"
        if not target.is_file():
            _write_tar(target, root, [MANIFEST, SIGNATURE, *members])
        payloads[key] = HostPayload(key, target, prefixes)
    keep = {p.file for p in payloads.values()}
    for old in folder.glob("*.tar"):
        if old not in keep:
            old.unlink()
    return payloads


def _write_tar(target: Path, root: Path, members: list[str]) -> None:
    tmp = target.with_name(target.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in members:
            path = root / name
            if not path.is_file():
                raise BundleError(
                    f"the imported bundle lacks {name}",
                    location=Location(file=str(path)),
                    hint="re-import the bundle",
                )
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, 0, "root", "root"
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    os.replace(tmp, target)


def site_store(plan: SitePlan) -> dict[str, Any] | None:
    """The storage the control host puts payloads on: of the storage systems the control host mounts,
    the one the most other hosts mount (then by name). None without a control host or such storage."""
    by_name = {h.name: h for h in plan.hosts}
    control = by_name.get(plan.control_host or "")
    if control is None:
        return None
    mounted_by: dict[str, int] = {}
    for host in plan.hosts:
        if host.name != control.name:
            for mount in host.mounts:
                mounted_by[mount.storage] = mounted_by.get(mount.storage, 0) + 1
    shared = [m for m in control.mounts if mounted_by.get(m.storage, 0) > 0]
    if not shared:
        return None
    chosen = min(shared, key=lambda m: (-mounted_by[m.storage], m.storage))
    # Each host finds the storage's mount path in its own aifactory_mounts. The name is plan text:
    # written `!unsafe` (grammar-checked already; never templated either way).
    return {"storage": Unsafe(chosen.storage), "folder": STORE_FOLDER}
