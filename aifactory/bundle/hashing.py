"""SHA-256 of many byte ranges at once, on every core, in bounded memory.

hashlib and os.pread release the GIL, so plain threads hash in parallel: each worker reads its range
in 1 MiB blocks with pread (no shared file position) and feeds them to its own hash. Memory stays at
one block per worker whatever the size of the bundle. Largest ranges go first so the cores finish
together.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

BLOCK = 1 << 20
Key = TypeVar("Key", bound=Hashable)
Pread = Callable[[int, int], bytes]


@dataclass(frozen=True)
class Digest:
    sha256: str
    size: int  # bytes actually read (less than asked when the source is short)


@dataclass(frozen=True)
class Range:
    read: Pread  # (length, offset) -> bytes
    offset: int
    size: int


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def hash_range(source: Range, sink: Callable[[bytes], object] | None = None) -> Digest:
    """SHA-256 of one range, block by block; each block also goes to `sink` (to copy while hashing)."""
    digest = hashlib.sha256()
    done = 0
    while done < source.size:
        block = source.read(min(BLOCK, source.size - done), source.offset + done)
        if not block:
            break
        digest.update(block)
        if sink is not None:
            sink(block)
        done += len(block)
    return Digest(digest.hexdigest(), done)


def hash_ranges(ranges: dict[Key, Range], *, workers: int | None = None) -> dict[Key, Digest]:
    """Hash every range; the result has the same keys."""
    order = sorted(ranges, key=lambda key: ranges[key].size, reverse=True)
    with ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="sha256") as pool:
        digests = list(pool.map(lambda key: hash_range(ranges[key]), order))
    return dict(zip(order, digests, strict=True))


def hash_file(path: Path) -> Digest:
    fd = os.open(path, os.O_RDONLY)
    try:
        return hash_range(Range(lambda length, offset: os.pread(fd, length, offset), 0, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def hash_files(
    paths: Iterable[Path], *, workers: int | None = None, on_hashed: Callable[[Digest], object] | None = None
) -> dict[Path, Digest]:
    """SHA-256 and size of each file, in parallel (each file opened only while it is hashed);
    `on_hashed` hears of each file as it is done (progress)."""
    unique = list(dict.fromkeys(paths))
    order = sorted(unique, key=lambda path: path.stat().st_size, reverse=True)
    digests: list[Digest] = []
    with ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="sha256") as pool:
        for digest in pool.map(hash_file, order):
            digests.append(digest)
            if on_hashed is not None:
                on_hashed(digest)
    return dict(zip(order, digests, strict=True))
