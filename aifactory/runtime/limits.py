"""Bounds on what hostile requests can cost the inference server: denials, recorded names, JSON depth.

- `DenialLimiter`: a peer that has been denied `per_peer` times in a window of `window` seconds is
  answered 429 until the window ends, without deciding or recording each request; so is everyone
  once `total` denials were recorded in the current window. What was suppressed is recorded once per
  window and peer, with its count (`Suppressed`). The decision log thus grows by at most
  `total + total / per_peer + 1` records per window, whatever the traffic.
- `recorded_name`: a name from a request (a model name in the path) as the decision log keeps it,
  cut to `MAX_RECORDED_NAME` characters.
- `nests_deeper_than`: whether a JSON document nests deeper than a limit, found without parsing it
  (a parser recurses: Python's raises RecursionError at ~1,000 levels); the server answers 400 past
  `MAX_JSON_DEPTH`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

MAX_RECORDED_NAME = 128
MAX_JSON_DEPTH = 16
EVERYONE = "*"  # the peer of the record that counts what the global limit suppressed
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def recorded_name(name: str) -> str:
    """`name` cut to MAX_RECORDED_NAME characters, with how long it was when cut."""
    if len(name) <= MAX_RECORDED_NAME:
        return name
    return f"{name[:MAX_RECORDED_NAME]}...({len(name)} chars)"


def nests_deeper_than(document: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether [ and { nest more than `limit` deep in a JSON text (brackets inside strings do not count)."""
    if document.count(b"[") + document.count(b"{") <= limit:  # the common, small case: cannot be deeper
        return False
    bare = np.frombuffer(_STRING.sub(b'""', document), dtype=np.uint8)
    steps = np.isin(bare, (0x5B, 0x7B)).astype(np.int32) - np.isin(bare, (0x5D, 0x7D)).astype(np.int32)
    return int(np.cumsum(steps).max(initial=0)) > limit


@dataclass(frozen=True)
class Suppressed:
    """Requests answered 429 for one peer (or EVERYONE) in one window: recorded once, with the count."""

    peer: str
    count: int
    window_start: float  # time.time() when the window began
    window: float


@dataclass
class _Window:
    start: float  # time.time()
    denials: int = 0
    suppressed: int = 0


class DenialLimiter:
    """Per-peer and global denial counts in fixed windows; the event loop's thread only (no lock)."""

    def __init__(self, *, per_peer: int = 20, total: int = 1000, window: float = 10.0) -> None:
        self.per_peer, self.total, self.window = per_peer, total, window
        self._peers: dict[str, _Window] = {}
        self._everyone: _Window | None = None
        self._over: list[Suppressed] = []  # windows that ended and were replaced before `ended` ran

    def admit(self, peer: str, now: float) -> bool:
        """False: answer 429 (counted in the window's `Suppressed`)."""
        everyone = self._current(EVERYONE, now)
        if everyone is not None and everyone.denials >= self.total:
            everyone.suppressed += 1
            return False
        own = self._current(peer, now)
        if own is not None and own.denials >= self.per_peer:
            own.suppressed += 1
            return False
        return True

    def denied(self, peer: str, now: float) -> None:
        """A denial was recorded for `peer`."""
        for key in (EVERYONE, peer):
            window = self._current(key, now)
            if window is None:
                old = self._everyone if key == EVERYONE else self._peers.get(key)
                if old is not None and old.suppressed:
                    self._over.append(Suppressed(key, old.suppressed, old.start, self.window))
                window = _Window(now)
                if key == EVERYONE:
                    self._everyone = window
                else:
                    self._peers[key] = window
            window.denials += 1

    def ended(self, now: float, *, all_of_them: bool = False) -> list[Suppressed]:
        """Forget windows that are over (every window with all_of_them); what they suppressed."""
        done, self._over = self._over, []
        for key, window in list(self._peers.items()):
            if all_of_them or now >= window.start + self.window:
                del self._peers[key]
                if window.suppressed:
                    done.append(Suppressed(key, window.suppressed, window.start, self.window))
        everyone = self._everyone
        if everyone is not None and (all_of_them or now >= everyone.start + self.window):
            self._everyone = None
            if everyone.suppressed:
                done.append(Suppressed(EVERYONE, everyone.suppressed, everyone.start, self.window))
        return done

    def _current(self, key: str, now: float) -> _Window | None:
        window = self._everyone if key == EVERYONE else self._peers.get(key)
        if window is None or now >= window.start + self.window:
            return None  # none yet, or over: `ended` reports and forgets it
        return window

    @property
    def tracked(self) -> int:
        return len(self._peers)
