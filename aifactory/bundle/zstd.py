"""zstd-compressed bundles, through the stock `zstd` tool.

Building: the normalized tar stream goes through `zstd --single-thread` (one thread, so the output
does not depend on the machine: same inputs, same bytes), and a signed seal is appended (see
aifactory/bundle/seal.py). Verifying and importing: the seal is checked first; only then is the
archive decompressed into a temporary uncompressed tar, never past the size the seal states, and
checked exactly like an uncompressed bundle, with hashing on every core. Most of a bundle is wheels,
already compressed; zstd mostly helps bundles that carry datasets.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol

from aifactory.bundle.source import Part, PartsReader
from aifactory.errors import BundleError, Location, PrerequisiteError

MAGIC = b"\x28\xb5\x2f\xfd"
LEVEL = 3
_BLOCK = 1 << 20


def zstd_binary() -> str:
    found = shutil.which("zstd")
    if not found:
        raise PrerequisiteError(
            "zstd is not installed; it is needed for a compressed bundle",
            hint="apt-get install zstd, or build an uncompressed bundle",
        )
    return found


def is_zstd(parts: list[Part]) -> bool:
    with parts[0].path.open("rb") as handle:
        return handle.read(4) == MAGIC


def _pump(read: Callable[[int], bytes], write: Callable[[bytes], object], close: Callable[[], None]) -> None:
    try:
        while block := read(_BLOCK):
            write(block)
    except BrokenPipeError:
        pass
    finally:
        close()


def _feed(reader: PartsReader, end: int, stdin: IO[bytes]) -> None:
    offset = 0
    try:
        while offset < end:
            block = reader.pread(min(_BLOCK, end - offset), offset)
            if not block:
                break
            stdin.write(block)
            offset += len(block)
    except (BrokenPipeError, ValueError):
        pass  # zstd stopped: it failed, or was stopped at the size limit
    finally:
        try:
            stdin.close()
        except BrokenPipeError:
            pass


def _copy_bounded(source: IO[bytes], target: Path, limit: int, *, name: str) -> int:
    written = 0
    with target.open("wb") as out:
        while block := source.read(_BLOCK):
            if written + len(block) > limit:
                raise BundleError(
                    f"the compressed bundle expands past the {limit} bytes its seal states; "
                    f"decompression was stopped at {written} bytes",
                    code="expands-too-far",
                    location=Location(file=name),
                    hint="the bundle was built wrongly or altered",
                )
            out.write(block)
            written += len(block)
    return written


def _check_room(folder: Path, needed: int, *, name: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise BundleError(
            f"the compressed bundle expands to {needed} bytes; {folder} has {free} bytes free",
            code="no-room",
            location=Location(file=name),
            hint="free some space there (verify decompresses into $TMPDIR, import beside the imports)",
        )


def decompress(parts: list[Part], target: Path, *, name: str, end: int, limit: int) -> None:
    """Decompress the first `end` bytes of the (joined) parts into `target`, which must come to
    exactly `limit` bytes (the size the seal states): decompression stops, and the bundle is refused,
    as soon as the output would pass it. A damaged or cut stream is a `truncated` error."""
    _check_room(target.parent, limit, name=name)
    process = subprocess.Popen(
        [zstd_binary(), "-d", "-q", "-c"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    with PartsReader(parts) as reader:
        feeder = threading.Thread(target=_feed, args=(reader, end, process.stdin), daemon=True)
        feeder.start()
        try:
            written = _copy_bounded(process.stdout, target, limit, name=name)
        except BaseException:
            process.kill()  # the feeder then meets a closed pipe and stops
            process.wait()
            raise
        finally:
            feeder.join()
    error = process.stderr.read().decode(errors="replace").strip()
    if process.wait() != 0:
        raise BundleError(
            f"the compressed bundle is damaged or cut short: {error or 'zstd failed'}",
            code="truncated",
            location=Location(file=name),
            hint="copy the bundle (all its parts) again",
        )
    if written != limit:
        raise BundleError(
            f"the compressed bundle expands to {written} bytes; its seal says {limit}",
            code="seal-mismatch",
            location=Location(file=name),
            hint="the bundle was built wrongly or altered",
        )


class Sink(Protocol):
    """Where compressed bytes go: anything with write()."""

    def write(self, data: bytes, /) -> object: ...


class CompressingWriter:
    """A file-like object that compresses what is written into it and passes it to `sink`."""

    def __init__(self, sink: Sink) -> None:
        self._process = subprocess.Popen(
            [zstd_binary(), f"-{LEVEL}", "-q", "-c", "--single-thread"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._sink = sink
        self.written = 0  # uncompressed bytes taken in
        self._error: BaseException | None = None
        self._drain = threading.Thread(target=self._copy_out, daemon=True)
        self._drain.start()

    def _copy_out(self) -> None:
        assert self._process.stdout is not None
        try:
            _pump(self._process.stdout.read, self._sink.write, self._process.stdout.close)
        except BaseException as error:  # noqa: BLE001 - handed to the writing thread in _fail
            self._error = error
            self._process.kill()

    def _fail(self) -> BundleError:
        cause = f": {self._error}" if self._error else ""
        return BundleError(f"writing the compressed bundle failed{cause}", code="bundle-build-failed")

    def write(self, data: bytes) -> int:
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(data)
        except BrokenPipeError:
            raise self._fail() from self._error
        self.written += len(data)
        return len(data)

    def finish(self) -> None:
        assert self._process.stdin is not None
        try:
            self._process.stdin.close()
        except BrokenPipeError:
            pass
        self._drain.join()
        if self._process.wait() != 0 or self._error is not None:
            raise self._fail() from self._error
