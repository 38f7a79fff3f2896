"""The bundle's tar archive: written deterministically, read without trusting it.

Writing: regular files only, sorted by path, owner 0:0 with empty owner names, one fixed mtime,
modes normalized to 0644 (0755 when the source is executable), POSIX (pax) format. The same files
and timestamp give the same bytes.

Reading: the member headers are scanned (data is skipped, not read) and every member is checked
before anything is extracted or trusted: no absolute paths, no `..`, no links (a link that points out
of the tree is named as such), no device files or FIFOs, no directory entries, no duplicate names,
and no data past the end of the archive (a truncated archive or a missing last part).
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from aifactory.errors import Location, Problem

BLOCK = tarfile.BLOCKSIZE


def normalized_info(name: str, size: int, *, mtime: int, executable: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o755 if executable else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_tar(stream: IO[bytes], files: Iterable[tuple[str, Path]], *, mtime: int) -> None:
    """Write (archive path, source file) pairs, sorted by archive path, as a normalized tar."""
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT, bufsize=1 << 20) as tar:
        for name, source in sorted(files):
            with source.open("rb") as handle:
                size = source.stat().st_size
                executable = bool(source.stat().st_mode & 0o111)
                tar.addfile(normalized_info(name, size, mtime=mtime, executable=executable), handle)


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    data_offset: int


@dataclass
class Scan:
    members: dict[str, Member]
    problems: list[Problem]
    end: int  # offset just past the last member's padded data


def unsafe_name(name: str) -> str | None:
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if ".." in name.split("/"):
        return "a `..` component"
    if "\\" in name or "\x00" in name:
        return "a backslash or NUL in the name"
    return None


def link_escapes(member: tarfile.TarInfo) -> bool:
    if member.issym():
        if member.linkname.startswith("/"):
            return True
        target = posixpath.normpath(posixpath.join(posixpath.dirname(member.name), member.linkname))
    else:
        target = posixpath.normpath(member.linkname)
    return target == ".." or target.startswith("../") or target.startswith("/")


def member_problem(member: tarfile.TarInfo, archive: str) -> Problem | None:
    where = Location(file=archive, path=member.name)
    unsafe = unsafe_name(member.name)
    if unsafe:
        return Problem(
            "unsafe-path",
            f"the archive holds a path with {unsafe}",
            where,
            hint="a bundle never has one: refuse to unpack it",
        )
    if member.issym() or member.islnk():
        kind = "symbolic" if member.issym() else "hard"
        if link_escapes(member):
            return Problem(
                "link-outside-tree",
                f"a {kind} link points out of the bundle, to {member.linkname!r}",
                where,
                hint="a bundle never has links: this one was altered",
            )
        return Problem(
            "unexpected-link", f"a {kind} link to {member.linkname!r}; bundles hold regular files only", where
        )
    if member.ischr() or member.isblk() or member.isfifo():
        return Problem("special-file", "a device file or FIFO; bundles hold regular files only", where)
    if not (member.isfile() or member.isdir()):
        return Problem("special-file", f"an entry of unknown tar type {member.type!r}", where)
    return None


def scan(reader: IO[bytes], *, size: int, archive: str) -> Scan:
    """Read every header (skipping data) and check each member; never raises on bad content."""
    members: dict[str, Member] = {}
    problems: list[Problem] = []
    end = 0
    try:
        tar = tarfile.open(fileobj=reader, mode="r:")
    except tarfile.TarError as exc:
        return Scan(
            {},
            [
                Problem(
                    "not-a-bundle",
                    f"not a tar archive ({exc})",
                    Location(file=archive),
                    hint="give the bundle file written by `aifactory bundle build`",
                )
            ],
            0,
        )
    try:
        while True:
            try:
                member = tar.next()
            except tarfile.TarError as exc:
                problems.append(
                    Problem(
                        "truncated",
                        f"the archive is damaged or truncated after byte {end} ({exc})",
                        Location(file=archive),
                        hint="copy the bundle (all its parts) again",
                    )
                )
                break
            if member is None:
                break
            name = member.name.removeprefix("./")
            end = member.offset_data + -(-member.size // BLOCK) * BLOCK
            problem = member_problem(member, archive)
            if problem:
                problems.append(problem)
                continue
            if member.isdir():
                # write_tar writes none; unpacked with stock tar, a directory named like a listed
                # file would shadow it (or the file would land inside the directory)
                problems.append(
                    Problem(
                        "unexpected-directory",
                        "a directory entry; bundles hold regular files only",
                        Location(file=archive, path=name),
                        hint="a directory named like a listed file could shadow it: this bundle was altered",
                    )
                )
                continue
            if name in members:
                problems.append(
                    Problem(
                        "duplicate-entry",
                        "the archive holds this path twice",
                        Location(file=archive, path=name),
                        hint="a later copy could silently replace a verified one",
                    )
                )
                continue
            if member.offset_data + member.size > size:
                problems.append(
                    Problem(
                        "truncated",
                        f"the archive ends inside this file: {member.size} bytes "
                        f"expected, {max(0, size - member.offset_data)} present",
                        Location(file=archive, path=name),
                        hint="copy the bundle (all its parts) again",
                    )
                )
                continue
            members[name] = Member(name, member.size, member.offset_data)
    finally:
        tar.close()
    if not problems or all(p.code != "truncated" for p in problems):
        problems += _check_end_marker(reader, end, size, archive)
    return Scan(members, problems, end)


def _check_end_marker(reader: IO[bytes], end: int, size: int, archive: str) -> list[Problem]:
    reader.seek(end)
    marker = reader.read(2 * BLOCK)
    if len(marker) < 2 * BLOCK or marker.strip(b"\x00"):
        return [
            Problem(
                "truncated",
                f"the archive is damaged or cut short: no end-of-archive marker at byte {end} "
                f"(it is {size} bytes long)",
                Location(file=archive),
                hint="copy the bundle (all its parts) again; a split bundle may be missing its last part",
            )
        ]
    while block := reader.read(1 << 20):  # tar pads with zeros; anything else was appended
        if block.strip(b"\x00"):
            return [
                Problem(
                    "trailing-data",
                    "data follows the end-of-archive marker",
                    Location(file=archive),
                    hint="something was appended to the bundle; stock tar would ignore it, aifactory "
                    "refuses it",
                )
            ]
    return []


def read_member(reader: IO[bytes], member: Member, *, limit: int) -> bytes:
    """A small member's bytes (the manifest, its signature, SHA256SUMS)."""
    reader.seek(member.data_offset)
    return reader.read(min(member.size, limit))


def buffered(raw: io.RawIOBase) -> IO[bytes]:
    return io.BufferedReader(raw, buffer_size=1 << 16)
