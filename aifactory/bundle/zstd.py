"""zstd-compressed bundles, through the stock `zstd` tool.

Building: the normalized tar stream goes through `zstd --single-thread` (one thread, so the output
does not depend on the machine: same inputs, same bytes). Verifying and importing: the archive is
first decompressed into a temporary uncompressed tar (it needs that much free space), which is then
checked exactly like an uncompressed bundle, with hashing on every core. Most of a bundle is wheels,
already compressed; zstd mostly helps bundles that carry datasets.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

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


def decompress(parts: list[Part], target: Path, *, name: str) -> None:
    """Decompress the (joined) parts into `target`; a damaged or cut stream is a `truncated` error."""
    process = subprocess.Popen(
        [zstd_binary(), "-d", "-q", "-c"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    with PartsReader(parts) as reader:
        feeder = threading.Thread(
            target=_pump, args=(reader.read, process.stdin.write, process.stdin.close), daemon=True
        )
        feeder.start()
        with target.open("wb") as out:
            shutil.copyfileobj(process.stdout, out, _BLOCK)
        feeder.join()
    error = process.stderr.read().decode(errors="replace").strip()
    if process.wait() != 0:
        raise BundleError(
            f"the compressed bundle is damaged or cut short: {error or 'zstd failed'}",
            code="truncated",
            location=Location(file=name),
            hint="copy the bundle (all its parts) again",
        )


class CompressingWriter:
    """A file-like object that compresses what is written into it and passes it to `sink`."""

    def __init__(self, sink: IO[bytes]) -> None:
        self._process = subprocess.Popen(
            [zstd_binary(), f"-{LEVEL}", "-q", "-c", "--single-thread"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._sink = sink
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
