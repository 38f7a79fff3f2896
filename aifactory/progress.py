"""Progress of a long step, as the library reports it: which step, how many items and bytes so far.

The library never prints: a long-running function takes a `Progress` (`SILENT` by default) and tells
it each step it starts and what it has gathered. The CLI passes one that draws a line on a terminal
(aifactory/cli/progress.py); a script or a test may pass its own or none.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def step(self, name: str, *, total_items: int | None = None, total_bytes: int | None = None) -> None:
        """A new step starts (its counts start at zero; totals where they are known)."""

    def advance(self, *, items: int = 0, nbytes: int = 0) -> None:
        """The current step has done `items` more items and `nbytes` more bytes."""


class _Silent:
    def step(self, name: str, *, total_items: int | None = None, total_bytes: int | None = None) -> None:
        return None

    def advance(self, *, items: int = 0, nbytes: int = 0) -> None:
        return None


SILENT: Progress = _Silent()
