"""What a backup holds of a state folder, as a deterministic tar, and how it is unpacked without trusting it.

Writing: the state folder's directories and regular files, sorted by path (a directory before what it
holds), each with its permission bits (0600 keys stay 0600), owner 0:0 without names, mtime 0, POSIX
(pax) format: the same folder gives the same bytes. Left out (LEFT_OUT, docs/operations.md says why):
this machine's lock, the local lab, caches and what deploy makes again. Links, sockets and other
special files are never followed or stored: they are listed as skipped.

Reading: one member at a time from a stream (nothing is held whole). Before a member's bytes are
written it must be a directory or a regular file with a plain relative path (no absolute path, no
`..`, `.` or empty component, no backslash or NUL), not seen before, and no larger than what the
backup's signed summary leaves: links (those pointing out of the tree named as such), device files,
FIFOs and any other type are refused, and so is the whole restore.
"""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from aifactory.bundle.archive import link_escapes, unsafe_name
from aifactory.errors import BackupError, Location, StateError
from aifactory.progress import SILENT, Progress

# Paths of a state folder a backup leaves out, and why (relative to the state folder).
LEFT_OUT: dict[str, str] = {
    "lock": "the site lock: an flock of this machine's processes",
    "lock.owner": "who took the site lock last: a process id on this machine",
    "lab": "the local lab: the lab hosts' disks, BMC emulators and the processes running them, not the "
    "control host's state (a real site has none); `aifactory lab up` makes it",
    "deploy/facts": "Ansible's fact cache: gathered again from the hosts",
    "deploy/cp": "SSH connection-sharing sockets of connections open now",
    "deploy/ansible-home": "Ansible's own home: temporary files and caches",
    "deploy/collections": "a link to the installed aifactory's playbooks, made again by every deploy",
    "deploy/payload": "the hosts' payload tar, made again (byte for byte) from the imported bundle",
}
# Names left out wherever they are.
CACHE_NAMES: dict[str, str] = {"__pycache__": "Python's bytecode cache"}
FIXED_MTIME = 0
_BLOCK = 1 << 20
_PERMISSIONS = 0o777


@dataclass(frozen=True)
class Entry:
    name: str  # path inside the archive, relative to the state folder, with '/'
    path: Path
    directory: bool
    mode: int  # permission bits
    size: int


@dataclass(frozen=True)
class Contents:
    entries: tuple[Entry, ...]
    left_out: tuple[str, ...]  # paths present and left out by rule
    skipped: tuple[tuple[str, str], ...]  # (path, what it is): links, sockets, FIFOs, devices

    @property
    def files(self) -> int:
        return sum(1 for e in self.entries if not e.directory)

    @property
    def directories(self) -> int:
        return sum(1 for e in self.entries if e.directory)

    @property
    def file_bytes(self) -> int:
        return sum(e.size for e in self.entries)


def _what(mode: int) -> str | None:
    """What a non-regular, non-directory entry is (None for those two)."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISLNK(mode):
        return "a symbolic link (not followed)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "a device or other special file"


def gather(root: Path) -> Contents:
    """Everything of the state folder `root` a backup holds, sorted, with what it leaves out."""
    entries: list[Entry] = []
    left_out: list[str] = []
    skipped: list[tuple[str, str]] = []
    pending = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as listing:
            for item in listing:
                name = f"{prefix}{item.name}"
                if name in LEFT_OUT or item.name in CACHE_NAMES:
                    left_out.append(name)
                    continue
                info = item.stat(follow_symlinks=False)
                what = _what(info.st_mode)
                if what:
                    skipped.append((name, what))
                    continue
                directory = stat.S_ISDIR(info.st_mode)
                size = 0 if directory else info.st_size
                entries.append(Entry(name, Path(item.path), directory, info.st_mode & _PERMISSIONS, size))
                if directory:
                    pending.append((Path(item.path), f"{name}/"))
    entries.sort(key=lambda e: e.name.split("/"))
    return Contents(tuple(entries), tuple(sorted(left_out)), tuple(sorted(skipped)))


def _info(entry: Entry, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.name)
    info.type = tarfile.DIRTYPE if entry.directory else tarfile.REGTYPE
    info.mode = entry.mode
    info.size = size
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar(sink: Any, contents: Contents, *, progress: Progress = SILENT) -> None:
    """The entries as a normalized tar into `sink` (anything with write()), streamed file by file."""
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, bufsize=_BLOCK) as tar:
        for entry in contents.entries:
            if entry.directory:
                tar.addfile(_info(entry, 0))
            else:
                _add_file(tar, entry)
                progress.advance(items=1, nbytes=entry.size)


def _add_file(tar: tarfile.TarFile, entry: Entry) -> None:
    changed = BackupError(
        f"{entry.path} changed while it was being backed up",
        code="backup-source-changed",
        location=Location(file=str(entry.path)),
        hint="run the backup again once no command writes to the state folder",
    )
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise StateError(
            f"cannot read {entry.path}: {exc.strerror}", location=Location(file=str(entry.path))
        ) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise changed
        # What the file held when gathered: a log appended to since gives the prefix it had then.
        try:
            tar.addfile(_info(entry, entry.size), handle)
        except OSError:  # tarfile's "unexpected end of data": the file shrank
            raise changed from None


@dataclass(frozen=True)
class Extracted:
    files: int
    directories: int
    file_bytes: int


class Limited:
    """A reader that refuses to give more than `limit` bytes in all (what the signed summary states)."""

    def __init__(self, source: IO[bytes], limit: int, name: str) -> None:
        self._source = source
        self._limit = limit
        self._name = name
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.count += len(data)
        if self.count > self._limit:
            raise BackupError(
                f"the backup expands past the {self._limit} bytes its signed summary states",
                code="backup-hostile",
                location=Location(file=self._name),
                hint="nothing was restored; this file was not written by `aifactory backup`",
            )
        return data

    @property
    def limit(self) -> int:
        return self._limit

    def drain(self) -> None:
        while self.read(_BLOCK):
            pass


def _hostile(name: str, member: str, message: str, hint: str) -> BackupError:
    return BackupError(
        f"{message}: nothing was restored",
        code="backup-hostile",
        location=Location(file=name, path=member),
        hint=hint,
    )


_NEVER = "a backup aifactory writes never holds one: this file was altered or made to attack"


def check_member(member: tarfile.TarInfo, *, name: str, seen: set[str], room: int) -> str:
    """The member's path if it may be unpacked; BackupError (backup-hostile) otherwise."""
    path = member.name
    unsafe = unsafe_name(path)
    if unsafe:
        raise _hostile(name, path, f"the backup holds a path with {unsafe}", _NEVER)
    if any(part in ("", ".") for part in path.split("/")):
        raise _hostile(name, path, "the backup holds a path with an empty or '.' component", _NEVER)
    if member.issym() or member.islnk():
        kind = "symbolic" if member.issym() else "hard"
        where = "out of the state folder, " if link_escapes(member) else ""
        raise _hostile(name, path, f"the backup holds a {kind} link {where}to {member.linkname!r}", _NEVER)
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
        what = "a device file or FIFO" if member.ischr() or member.isblk() or member.isfifo() else "an entry"
        raise _hostile(name, path, f"the backup holds {what} of tar type {member.type!r}", _NEVER)
    if path in seen:
        raise _hostile(name, path, "the backup holds this path twice", "a later copy would replace the first")
    if member.size > room:
        raise _hostile(
            name,
            path,
            f"the backup holds a {member.size}-byte member, more than the {room} bytes left of what "
            "its signed summary states",
            _NEVER,
        )
    return path


def extract(source: Limited, target: Path, *, name: str, progress: Progress = SILENT) -> Extracted:
    """Unpack the tar read from `source` into the empty folder `target`; BackupError at the first
    member that is not a plain directory or file (what was written so far is the caller's to remove)."""
    seen: set[str] = set()
    directories: list[tuple[Path, int]] = []
    files = file_bytes = 0
    with _damage_is_named(name):
        tar = tarfile.open(fileobj=source, mode="r|")  # type: ignore[call-overload]  # read() is enough in stream mode
        for member in tar:
            # the stream reads ahead: what is left is counted from where this member's data starts
            path = check_member(member, name=name, seen=seen, room=source.limit - member.offset_data)
            seen.add(path)
            destination = target / path
            with _writing(name, path, destination):
                _make_parent(destination, target)
                if member.isdir():
                    destination.mkdir(mode=0o700)
                    directories.append((destination, member.mode & _PERMISSIONS))
                    continue
                data = tar.extractfile(member)
                assert data is not None  # a regular file
                _write_file(destination, data, member.mode & _PERMISSIONS, name=name)
            files += 1
            file_bytes += member.size
            progress.advance(items=1)  # the bytes are counted as they are decrypted
        source.drain()  # the end-of-archive padding, and with it the marked last chunk
    for folder, mode in reversed(directories):  # deepest first: a read-only folder is filled before
        os.chmod(folder, mode)
    return Extracted(files, len(directories), file_bytes)


@contextmanager
def _damage_is_named(name: str) -> Iterator[None]:
    """gzip's, zlib's and tarfile's errors on a damaged stream, as one BackupError."""
    try:
        yield
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise _damaged(name, exc) from None
    except OSError as exc:
        if isinstance(exc, gzip.BadGzipFile):
            raise BackupError(
                f"the backup's archive is not gzip data ({exc})",
                location=Location(file=name),
                hint="nothing was restored; this file was not written by `aifactory backup`",
            ) from None
        raise


def _damaged(name: str, cause: BaseException) -> BackupError:
    return BackupError(
        f"the backup's archive is damaged or cut short ({cause})",
        location=Location(file=name),
        hint="nothing was restored; copy the backup again and run the same restore",
    )


@contextmanager
def _writing(name: str, member: str, destination: Path) -> Iterator[None]:
    """A member that clashes with one unpacked before (a file where a folder is), as hostile; other
    errors writing the copy (a full disk) as what they are."""
    try:
        yield
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        clash = "the backup holds a path that clashes with another of its paths"
        raise _hostile(name, member, clash, _NEVER) from None
    except OSError as exc:
        raise StateError(
            f"cannot write {destination}: {exc.strerror}",
            location=Location(file=str(destination)),
            hint="free some space (or fix the folder's permissions) and run the same restore again; "
            "nothing was changed in the site's state folder",
        ) from None


def _make_parent(destination: Path, target: Path) -> None:
    parent = destination.parent
    if parent != target and not parent.is_dir():
        os.makedirs(parent, mode=0o700)  # a directory entry makes it first in what backup writes


def _write_file(destination: Path, data: IO[bytes], mode: int, *, name: str) -> None:
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        while True:
            try:
                block = data.read(_BLOCK)
            except (EOFError, OSError, zlib.error) as exc:  # reading the archive, not writing the copy
                raise _damaged(name, exc) from None
            if not block:
                break
            handle.write(block)
        handle.flush()
        os.fchmod(fd, mode)
        os.fsync(fd)
