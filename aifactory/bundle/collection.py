"""The playbooks and roles as an Ansible collection tarball, built and then normalized.

A collection folder is staged from `playbooks/`, laid out as Galaxy expects: a generated galaxy.yml,
`roles/`, `plugins/` (the module aifactory.factory.aifactory_host_state) and `meta/` (runtime.yml)
from the folders of those names, every other playbook file under `playbooks/`. It is built with the
stock `ansible-galaxy collection build`. Its tarball is then repacked so the same sources give the same
bytes: entries sorted, mtimes fixed to the build timestamp, owner 0:0, modes 0644/0755, gzip header
mtime 0 and no file name.

Extra collection tarballs (what the roles use beyond ansible.builtin; the site cannot reach Galaxy)
are carried as given, after checking that each is a collection with a readable MANIFEST.json.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from aifactory.bundle.archive import normalized_info
from aifactory.errors import BundleError, Location
from aifactory.resources import control_tool

NAMESPACE = "aifactory"
NAME = "factory"
_SKIP = {".keep", ".gitkeep", "__pycache__", ".git"}
# Folders of playbooks/ that are the collection's own, at its root (the rest goes under playbooks/).
_AT_ROOT = ("roles", "plugins", "meta")


@dataclass(frozen=True)
class Collection:
    namespace: str
    name: str
    version: str

    @property
    def fqcn(self) -> str:
        return f"{self.namespace}.{self.name}"

    def file_name(self) -> str:
        return f"{self.namespace}-{self.name}-{self.version}.tar.gz"


def ansible_galaxy() -> str:
    return control_tool("ansible-galaxy", needed_for="it builds the playbooks' collection")


def _galaxy_yml(version: str) -> str:
    return (
        f"namespace: {NAMESPACE}\nname: {NAME}\nversion: {version}\nreadme: README.md\n"
        "authors: [aifactory developers]\nlicense: [Apache-2.0]\n"
        "description: The roles and playbooks that deploy an aifactory site (carried in the offline "
        "bundle).\n"
        "dependencies: {}\nbuild_ignore: ['*.pyc', '__pycache__']\n"
    )


def source_collections_path(playbooks: Path, folder: Path) -> Path:
    """A collections path under `folder` where aifactory.factory is `playbooks` itself (a link to it:
    that folder is laid out as the collection), so that its module and roles run by their FQCN
    straight from a checkout or the installed package, as they do from the built collection."""
    link = folder / "ansible_collections" / NAMESPACE / NAME
    link.parent.mkdir(parents=True, exist_ok=True)
    target = playbooks.resolve()
    if link.is_symlink() and link.resolve() == target:
        return folder
    if link.is_symlink():
        link.unlink()
    link.symlink_to(target, target_is_directory=True)
    return folder


def _copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(
        source,
        target,
        ignore=lambda _dir, names: [n for n in names if n in _SKIP],
        symlinks=False,
        dirs_exist_ok=True,
    )


def stage(playbooks: Path, staging: Path, *, version: str) -> Path:
    """A collection folder from playbooks/ (roles/, plugins/, meta/ at its root, the rest under
    playbooks/)."""
    root = staging / f"{NAMESPACE}.{NAME}"
    (root / "playbooks").mkdir(parents=True)
    (root / "galaxy.yml").write_text(_galaxy_yml(version))
    readme = f"# {NAMESPACE}.{NAME}\n\nThe aifactory deployment roles and playbooks.\n"
    (root / "README.md").write_text(readme)
    for entry in sorted(playbooks.iterdir()) if playbooks.is_dir() else []:
        if entry.name in _SKIP:
            continue
        if entry.name in _AT_ROOT and entry.is_dir():
            _copy_tree(entry, root / entry.name)
        elif entry.is_dir():
            _copy_tree(entry, root / "playbooks" / entry.name)
        elif entry.is_file() and entry.suffix in (".yml", ".yaml"):
            roles = sorted(r.name for r in (playbooks / "roles").iterdir() if r.is_dir())
            (root / "playbooks" / entry.name).write_text(_fqcn_roles(entry.read_text(), roles))
        elif entry.is_file():
            shutil.copy2(entry, root / "playbooks" / entry.name)
    return root


def _fqcn_roles(playbook: str, roles: list[str]) -> str:
    """The playbook with `- role: NAME` naming the collection's role by its FQCN. In the source
    folder a role is found by its short name beside the playbook (roles/); in the installed
    collection there is no roles/ beside playbooks/, and ansible-lint's production profile forbids
    the `collections:` keyword that would find it otherwise."""
    pattern = re.compile(rf"^(\s*- role: )({'|'.join(map(re.escape, roles))})\s*$", re.MULTILINE)
    return pattern.sub(rf"\g<1>{NAMESPACE}.{NAME}.\g<2>", playbook) if roles else playbook


def build(
    playbooks: Path, output: Path, *, version: str, timestamp: int, work: Path
) -> tuple[Collection, Path]:
    """Build and normalize the collection; return it and the tarball written into `output`."""
    root = stage(playbooks, work / "stage", version=version)
    built = work / "built"
    done = subprocess.run(
        [ansible_galaxy(), "collection", "build", str(root), "--output-path", str(built), "--force"],
        capture_output=True,
        text=True,
        check=False,
    )
    collection = Collection(NAMESPACE, NAME, version)
    raw = built / collection.file_name()
    if done.returncode != 0 or not raw.is_file():
        output_text = (done.stderr or done.stdout).strip()[-600:]
        raise BundleError(
            f"ansible-galaxy collection build failed: {output_text}",
            code="collection-build-failed",
            location=Location(file=str(playbooks)),
        )
    output.mkdir(parents=True, exist_ok=True)
    target = output / collection.file_name()
    normalize(raw, target, timestamp=timestamp)
    return collection, target


def normalize(source: Path, target: Path, *, timestamp: int) -> None:
    """Repack a .tar.gz: sorted entries, fixed mtime and owners, normalized modes, gzip mtime 0."""
    entries: list[tuple[str, tarfile.TarInfo, bytes | None]] = []
    with tarfile.open(source, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isdir():
                info = tarfile.TarInfo(member.name)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, timestamp
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                entries.append((member.name, info, None))
            elif member.isfile():
                handle = tar.extractfile(member)
                assert handle is not None
                data = handle.read()
                info = normalized_info(
                    member.name, len(data), mtime=timestamp, executable=bool(member.mode & 0o111)
                )
                entries.append((member.name, info, data))
            else:
                raise BundleError(
                    f"the collection holds a link or special file {member.name}; refusing it",
                    code="collection-invalid",
                    location=Location(file=str(source)),
                )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as out:
        for _name, info, content in sorted(entries, key=lambda item: item[0]):
            out.addfile(info, io.BytesIO(content) if content is not None else None)
    with (
        target.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as zipped,
    ):
        zipped.write(buffer.getvalue())


def identify(tarball: Path) -> Collection:
    """Namespace, name and version of a collection tarball (from its MANIFEST.json)."""
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            handle = tar.extractfile("MANIFEST.json")
            info = json.load(handle)["collection_info"] if handle else None
    except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
        raise BundleError(
            f"{tarball} is not an Ansible collection tarball ({exc})",
            code="collection-invalid",
            location=Location(file=str(tarball)),
            hint="give a file made by `ansible-galaxy collection build` or downloaded from Galaxy",
        ) from None
    if not info:
        raise BundleError(
            f"{tarball} has no MANIFEST.json", code="collection-invalid", location=Location(file=str(tarball))
        )
    return Collection(str(info["namespace"]), str(info["name"]), str(info["version"]))
