"""Reading a bundle that may be one file or several parts, and writing it in parts.

A split bundle is the plain byte sequence of the archive cut into parts named

    NAME.part-001-of-003, NAME.part-002-of-003, NAME.part-003-of-003

so `cat NAME.part-* > NAME` rejoins it with stock tools. Every part carries the total, so a missing
part (first, middle or last) is named before anything is read. The default part size stays under
4 GiB, the largest file FAT32 media hold.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from aifactory.errors import BundleError, Location, UsageError

if TYPE_CHECKING:  # typeshed's names for what io's readinto/write accept (types only)
    from _typeshed import ReadableBuffer, WriteableBuffer

FAT32_LIMIT = 4 * 1024**3 - 1
DEFAULT_PART_SIZE = 4 * 1024**3 - 1024**2  # 4 GiB less 1 MiB: fits FAT32 with room to spare
_PART = re.compile(r"^(?P<base>.+)\.part-(?P<index>\d{3,})-of-(?P<total>\d{3,})$")
_SIZE = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "KI": 1024,
    "MI": 1024**2,
    "GI": 1024**3,
    "TI": 1024**4,
}


def parse_size(text: str) -> int:
    """`3.9G`, `700MiB`, `4000000000` -> bytes (K/M/G/T are powers of 1000, Ki/Mi/Gi/Ti of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise UsageError(f"cannot read the size {text!r}", hint="write it like 3900M, 3.5GiB or 1000000")
    unit = (match["unit"] or "").upper().removesuffix("B")
    size = int(float(match["number"]) * _UNITS[unit])
    if size < 1024**2:
        raise UsageError(f"part size {text!r} is below 1 MiB", hint="removable media parts are usually GiBs")
    return size


def part_name(base: Path, index: int, total: int) -> Path:
    width = max(3, len(str(total)))
    return base.with_name(f"{base.name}.part-{index:0{width}d}-of-{total:0{width}d}")


@dataclass(frozen=True)
class Part:
    path: Path
    size: int


def find_parts(path: Path) -> list[Part]:
    """The file itself, or every part of a split bundle given by its base name or any one part.

    Raises BundleError (missing-part) naming each absent part."""
    path = Path(path)
    match = _PART.match(path.name)
    if path.is_file() and not match:
        return [Part(path, path.stat().st_size)]
    base = path.with_name(match["base"]) if match else path
    found: dict[int, tuple[Path, int]] = {}
    for candidate in sorted(base.parent.glob(f"{base.name}.part-*")):
        named = _PART.match(candidate.name)
        if named and named["base"] == base.name:
            found[int(named["index"])] = (candidate, int(named["total"]))
    if not found:
        raise BundleError(
            f"no bundle at {path}",
            code="bundle-not-found",
            location=Location(file=str(path)),
            hint="give the bundle file, or any part of a split bundle",
        )
    totals = {total for _, total in found.values()}
    if len(totals) != 1:
        raise BundleError(
            f"the parts of {base.name} disagree on how many parts there are ({sorted(totals)})",
            code="missing-part",
            location=Location(file=str(base)),
            hint="parts of two different bundles are mixed in one folder",
        )
    total = totals.pop()
    missing = [part_name(base, i, total).name for i in range(1, total + 1) if i not in found]
    if missing:
        raise BundleError(
            f"the split bundle {base.name} is incomplete: missing {', '.join(missing)}",
            code="missing-part",
            location=Location(file=str(base.parent / missing[0])),
            hint=f"copy all {total} parts into {base.parent}",
        )
    return [Part(found[i][0], found[i][0].stat().st_size) for i in range(1, total + 1)]


class PartsReader(io.RawIOBase):
    """The parts of a bundle read as one seekable file; `pread` is safe to call from many threads."""

    def __init__(self, parts: list[Part]) -> None:
        super().__init__()
        self.parts = parts
        self._fds = [os.open(p.path, os.O_RDONLY) for p in parts]
        self._starts: list[int] = []
        offset = 0
        for part in parts:
            self._starts.append(offset)
            offset += part.size
        self.size = offset
        self._position = 0

    def pread(self, length: int, offset: int) -> bytes:
        chunks: list[bytes] = []
        while length > 0 and offset < self.size:
            index = self._part_at(offset)
            within = offset - self._starts[index]
            data = os.pread(self._fds[index], min(length, self.parts[index].size - within), within)
            if not data:
                break
            chunks.append(data)
            offset += len(data)
            length -= len(data)
        return b"".join(chunks)

    def _part_at(self, offset: int) -> int:
        low, high = 0, len(self._starts) - 1
        while low < high:
            middle = (low + high + 1) // 2
            if self._starts[middle] <= offset:
                low = middle
            else:
                high = middle - 1
        return low

    # io.RawIOBase, for tarfile
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.pread(len(view), self._position)
        view[: len(data)] = data
        self._position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        """Wrappers (BufferedReader, tarfile) may close their raw file when collected: keep the
        descriptors open until release()."""

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> PartsReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()


class PartsWriter(io.RawIOBase):
    """Write one stream as parts of at most `part_size` bytes (or one file when part_size is None).

    Parts are written under temporary names and renamed once the total is known, so an interrupted
    build never leaves a set of parts that looks complete."""

    def __init__(self, target: Path, part_size: int | None) -> None:
        super().__init__()
        self.target = target
        self.part_size = part_size
        self._temporary: list[Path] = []
        self._handle: io.BufferedWriter | None = None
        self._in_part = 0
        self.written = 0
        self.final: list[Path] = []

    def writable(self) -> bool:
        return True

    def _next_part(self) -> io.BufferedWriter:
        if self._handle is not None:
            self._handle.close()
        temporary = self.target.with_name(f".{self.target.name}.{os.getpid()}.{len(self._temporary) + 1}.tmp")
        self._temporary.append(temporary)
        self._handle = temporary.open("wb")
        self._in_part = 0
        return self._handle

    def write(self, data: ReadableBuffer) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            handle = self._handle
            if handle is None or (self.part_size is not None and self._in_part >= self.part_size):
                handle = self._next_part()
            room = len(view) if self.part_size is None else min(len(view), self.part_size - self._in_part)
            handle.write(view[:room])
            self._in_part += room
            self.written += room
            view = view[room:]
        return total

    def commit(self) -> list[Path]:
        if self._handle is None:
            self._next_part()
        assert self._handle is not None
        self._handle.close()
        self._handle = None
        for stale in self._existing_outputs():
            stale.unlink()
        if self.part_size is None:
            os.replace(self._temporary[0], self.target)
            self.final = [self.target]
        else:
            total = len(self._temporary)
            self.final = [part_name(self.target, i, total) for i in range(1, total + 1)]
            for temporary, final in zip(self._temporary, self.final, strict=True):
                os.replace(temporary, final)
        self._temporary = []
        return self.final

    def _existing_outputs(self) -> list[Path]:
        old = [p for p in self.target.parent.glob(f"{self.target.name}.part-*") if _PART.match(p.name)]
        return old + ([self.target] if self.target.exists() else [])

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        for temporary in self._temporary:
            temporary.unlink(missing_ok=True)
        self._temporary = []

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is not None:
            self.abort()
        super().__exit__(kind, value, traceback)
