"""The prebuilt runtime tree: the node runtime's virtual environment, built once at `bundle build`.

Hosts used to create a virtual environment and pip-install the wheelhouse each (most of a first
deploy). Instead the build makes that environment once, with the interpreter the hosts run
(`/usr/bin/python3` by default, never the build tool's own), for the exact folder hosts install it
to (`<runtime root>/<bundle version>`), and packs it as one zstd-compressed tar:

- the environment is created in a staging folder (`venv --without-pip`: the tree needs no pip, and
  pip's own bytecode would name the staging folder) and filled by the build's pip, run for the
  staging interpreter (`pip --python`), from the bundle's runtime wheel set alone (`--no-index
  --no-compile`: no network, no bytecode that would embed paths or times);
- every text file naming the staging folder (console-script shebangs, pyvenv.cfg, activate scripts)
  is rewritten to name the target folder; a binary file naming it stops the build;
- the tar is normalized (sorted names, one mtime, uid/gid 0, no owner names, GNU format: no pax
  times), so two builds of the same inputs give the same bytes, and is named after its SHA-256;
- a listing in `sha256sum` format of every regular file in the tree goes beside it: after stock
  `tar` extracts the tree, the host checks every file with `sha256sum --check`. The manifest signs
  both the archive and the listing, so every extracted byte traces back to the signature.

A tree only runs under the interpreter version it was built with: the manifest records it, and the
runtime role refuses a host whose `python3` reports another.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.bundle.hashing import hash_file
from aifactory.bundle.wheelhouse import Platform
from aifactory.bundle.zstd import CompressingWriter
from aifactory.errors import BundleError, Location, PrerequisiteError

DEFAULT_PYTHON = Path("/usr/bin/python3")
DEFAULT_ROOT = "/opt/aifactory"
PAYLOAD_DIR = "runtime"
_TEXT_PROBE = 8192
_PROBE = (
    "import json, platform, sys; "
    "print(json.dumps({'version': platform.python_version(), 'machine': platform.machine(), "
    "'implementation': sys.implementation.name}))"
)


@dataclass(frozen=True)
class Interpreter:
    """The interpreter a tree is made with: the one the hosts run."""

    path: Path
    version: str  # e.g. 3.11.2
    machine: str  # e.g. x86_64

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])


@dataclass(frozen=True)
class RuntimeTree:
    """A packed tree, ready for the payload."""

    platform: Platform
    archive: Path  # the .tar.zst, named <sha256>.tar.zst
    listing: Path  # sha256sum lines of every regular file, named <sha256>.files
    sha256: str
    python: str
    target: str
    packages: tuple[tuple[str, str], ...]  # (name, version) of every installed distribution

    @property
    def archive_path(self) -> str:
        return f"{PAYLOAD_DIR}/{self.archive.name}"

    @property
    def listing_path(self) -> str:
        return f"{PAYLOAD_DIR}/{self.listing.name}"

    def manifest_entry(self) -> dict[str, Any]:
        """What the signed manifest says about the tree (contents.runtime_trees[<platform tag>])."""
        return {
            "archive": self.archive_path,
            "files": self.listing_path,
            "sha256": self.sha256,
            "python": self.python,
            "target": self.target,
            "packages": [{"name": n, "version": v} for n, v in self.packages],
        }


def probe_interpreter(python: Path) -> Interpreter:
    """Ask `python` for its version and machine (it must run here: the build host is a node's twin)."""
    try:
        done = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise PrerequisiteError(
            f"the runtime tree's interpreter {python} does not run here: {exc}",
            hint="install python3 (and python3-venv) like the hosts', or pass --runtime-python PATH",
        ) from None
    found = json.loads(done.stdout)
    return Interpreter(python, str(found["version"]), str(found["machine"]))


def require_matches(interpreter: Interpreter, platform: Platform) -> None:
    """A tree is built for one pool platform: the interpreter must be that platform's."""
    if interpreter.minor != platform.python or interpreter.machine != platform.arch:
        raise BundleError(
            f"the runtime tree for pool platform {platform.tag} cannot be built with {interpreter.path} "
            f"(python {interpreter.version} on {interpreter.machine})",
            code="runtime-tree-platform",
            location=Location(file=str(interpreter.path)),
            hint="build the bundle on a host of that platform, or build without --runtime-tree",
        )


def build_tree(
    *,
    interpreter: Interpreter,
    platform: Platform,
    wheels: Sequence[Path],
    requirements: Sequence[str],
    target: str,
    work: Path,
    timestamp: int,
) -> RuntimeTree:
    """Make, relocate and pack the tree of `requirements` (resolved in `wheels` alone) for `target`."""
    require_matches(interpreter, platform)
    work.mkdir(parents=True, exist_ok=True)
    wheelhouse = link_wheels(wheels, work / "wheels")
    staging = work / "staging" / Path(target).name
    if staging.exists():
        shutil.rmtree(staging)
    staging.parent.mkdir(parents=True, exist_ok=True)
    _run([str(interpreter.path), "-m", "venv", "--without-pip", str(staging)], what="create the venv")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(staging / "bin" / "python"),
            "install",
            "--isolated",
            "--no-index",
            "--no-compile",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--quiet",
            "--find-links",
            str(wheelhouse),
            *requirements,
        ],
        what="install the runtime wheels",
        env={**os.environ, "PIP_CONFIG_FILE": os.devnull},
    )
    relocate(staging, str(staging), target)
    packages = _installed(staging)
    archive = work / "tree.tar.zst"
    pack(staging, archive, timestamp=timestamp)
    digest = hash_file(archive).sha256
    named = work / f"{digest}.tar.zst"
    archive.rename(named)
    listing = work / f"{digest}.files"
    listing.write_bytes(file_listing(staging))
    return RuntimeTree(platform, named, listing, digest, interpreter.version, target, packages)


def link_wheels(wheels: Sequence[Path], folder: Path) -> Path:
    """A find-links folder of the wheel set (symbolic links: nothing large is copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        link = folder / wheel.name
        if not link.exists():
            link.symlink_to(wheel.resolve())
    return folder


def _run(argv: list[str], *, what: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise BundleError(
            f"building the runtime tree failed: could not {what} ({argv[0]} exited {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-2000:]}",
            code="runtime-tree-failed",
            hint="python3-venv must be installed for the tree's interpreter",
        )


def _walk(root: Path) -> list[Path]:
    """Every entry under root, sorted by its relative path (byte order), folders before contents."""
    return sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix().encode())


def relocate(root: Path, staging: str, target: str) -> None:
    """Rewrite `staging` to `target` in every text file; a binary file or link naming it is an error.
    The dist-info RECORDs then get the rewritten files' new hashes and sizes (a RECORD naming the
    staging hash would differ from build to build, and would not describe the file)."""
    old, new = staging.encode(), target.encode()
    rewritten: set[Path] = set()
    for path in _walk(root):
        if path.is_symlink():
            if staging in os.readlink(path):
                raise _names_staging(path, "a symbolic link")
            continue
        if not path.is_file():
            continue
        data = path.read_bytes()
        if old not in data:
            continue
        if b"\0" in data[:_TEXT_PROBE]:
            raise _names_staging(path, "a binary file")
        mode = path.stat().st_mode
        path.write_bytes(data.replace(old, new))
        path.chmod(mode)
        rewritten.add(path)
    for record in root.glob("lib/python*/site-packages/*.dist-info/RECORD"):
        _refresh_record(record, rewritten)


def _refresh_record(record: Path, rewritten: set[Path]) -> None:
    """Give RECORD rows of rewritten files their new `sha256=<urlsafe base64>` and size."""
    site_packages = record.parent.parent
    rows = list(csv.reader(io.StringIO(record.read_text(encoding="utf-8"))))
    changed = False
    for row in rows:
        if len(row) == 3 and row[1]:
            path = Path(os.path.normpath(site_packages / row[0]))
            if path in rewritten:
                data = path.read_bytes()
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                row[1], row[2] = f"sha256={digest}", str(len(data))
                changed = True
    if changed:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(rows)
        record.write_text(out.getvalue(), encoding="utf-8")


def _names_staging(path: Path, what: str) -> BundleError:
    return BundleError(
        f"{what} in the runtime tree names the build's staging folder and cannot be relocated",
        code="runtime-tree-failed",
        location=Location(file=str(path)),
    )


def _installed(root: Path) -> tuple[tuple[str, str], ...]:
    found: list[tuple[str, str]] = []
    for metadata in root.glob("lib/python*/site-packages/*.dist-info/METADATA"):
        fields: dict[str, str] = {}
        for line in metadata.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line:
                break
            key, _, value = line.partition(": ")
            fields.setdefault(key, value)
        found.append((fields.get("Name", ""), fields.get("Version", "")))
    return tuple(sorted(found, key=lambda item: item[0].lower()))


def _info(root: Path, path: Path, *, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path.relative_to(root).as_posix())
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if path.is_symlink():
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(path)
        info.mode = 0o777
    elif path.is_dir():
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.size = path.stat().st_size
        info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
    return info


def pack(root: Path, archive: Path, *, timestamp: int) -> None:
    """A normalized tar of root's contents (paths relative to it), compressed like the bundle."""
    with archive.open("wb") as out:
        writer = CompressingWriter(out)
        # typeshed's overloads want an IO[bytes] for a stream mode; the writer has the write() tar uses
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
            for path in _walk(root):
                info = _info(root, path, mtime=timestamp)
                if info.isreg():
                    with path.open("rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
        writer.finish()


def file_listing(root: Path) -> bytes:
    """`sha256sum` lines for every regular file under root (paths relative to it), sorted."""
    lines = io.StringIO()
    for path in _walk(root):
        if path.is_symlink() or not path.is_file():
            continue
        name = path.relative_to(root).as_posix()
        if "\n" in name or "\\" in name:
            raise BundleError(
                f"a file name in the runtime tree cannot be listed for sha256sum: {name!r}",
                code="runtime-tree-failed",
                location=Location(file=str(path)),
            )
        lines.write(f"{hash_file(path).sha256}  {name}\n")
    return lines.getvalue().encode()
