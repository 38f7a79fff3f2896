"""Progress on a terminal: one line on standard error, redrawn every half second while a step runs.

The line names the step and shows its counts, bytes and the time since the command started, e.g.

    bundle build | hash payload: 812/1,204 files, 1.9/3.2 GB, 41 s

It is redrawn by a timer, so the time moves on even while one long call (a download, a hash) runs,
and cleared when the command ends. Nothing is drawn when standard error is not a terminal (a pipe, a
file, a CI log) or with --quiet: the output is then exactly what it was without progress.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from aifactory.progress import SILENT, Progress

REDRAW_SECONDS = 0.5


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


def _count(done: int, total: int | None) -> str:
    return f"{done:,}/{total:,}" if total is not None else f"{done:,}"


class TerminalProgress:
    """A Progress that draws itself on a terminal (thread-safe: the timer and the work share it)."""

    def __init__(self, command: str, stream: TextIO) -> None:
        self.command = command
        self.stream = stream
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._name = "starting"
        self._items = self._bytes = 0
        self._total_items: int | None = None
        self._total_bytes: int | None = None
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._redraw_until_stopped, name="progress", daemon=True)

    def step(self, name: str, *, total_items: int | None = None, total_bytes: int | None = None) -> None:
        with self._lock:
            self._name, self._items, self._bytes = name, 0, 0
            self._total_items, self._total_bytes = total_items, total_bytes
        self._draw()

    def advance(self, *, items: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self._items += items
            self._bytes += nbytes

    def line(self) -> str:
        with self._lock:
            counts = f"{_count(self._items, self._total_items)} items"
            if self._bytes or self._total_bytes:
                size = _size(self._bytes)
                counts += f", {size}/{_size(self._total_bytes)}" if self._total_bytes else f", {size}"
            elapsed = time.monotonic() - self.started
            return f"{self.command} | {self._name}: {counts}, {elapsed:.0f} s"

    def _draw(self) -> None:
        self.stream.write("\r\x1b[K" + self.line())
        self.stream.flush()

    def _redraw_until_stopped(self) -> None:
        while not self._stop.wait(REDRAW_SECONDS):
            self._draw()

    def start(self) -> None:
        self._draw()
        self._timer.start()

    def close(self) -> None:
        self._stop.set()
        self._timer.join()
        self.stream.write("\r\x1b[K")
        self.stream.flush()


def wanted(args: argparse.Namespace, stream: TextIO) -> bool:
    return not getattr(args, "quiet", False) and stream.isatty()


@contextmanager
def shown(args: argparse.Namespace, command: str, stream: TextIO | None = None) -> Iterator[Progress]:
    """A Progress for the command: drawn on standard error when it is a terminal and not --quiet."""
    target = stream or sys.stderr
    if not wanted(args, target):
        yield SILENT
        return
    progress = TerminalProgress(command, target)
    progress.start()
    try:
        yield progress
    finally:
        progress.close()
