"""The server's canary watch (docs/loop.md, "Canary"): what the champion and the canary of one model
did over the last window, and whether the canary is worse by more than its margin.

Runs inside each server, not on the control host, so a bad canary is withdrawn while the control
host is away. An error is a request the version failed to answer (inference raised) or a decision it
answered that feedback marked wrong (an outcome `{"correct": false, ...}`: `is_negative`). Rates are
errors over requests within the window; the canary is judged once it answered `min_requests` there.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aifactory.trust.canary import CanarySettings, RoleCounts

ROLES = ("champion", "canary")


def is_negative(outcome: Any) -> bool:  # noqa: ANN401 -- feedback's outcome is any JSON value
    """Feedback marks the decision wrong: an object whose `correct` is false (docs/data.md)."""
    return isinstance(outcome, dict) and outcome.get("correct") is False


@dataclass
class CanaryWatch:
    """One model's champion and canary (by digest) and their requests and errors over the window;
    thread-safe (requests count on the event loop, feedback on a worker thread)."""

    settings: CanarySettings
    champion: str
    canary: str
    clock: Callable[[], float] = time.monotonic
    _events: deque[tuple[float, str, bool]] = field(default_factory=deque)  # (when, role, error)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def role_of(self, digest: str | None) -> str | None:
        return {self.champion: "champion", self.canary: "canary"}.get(digest or "")

    def answered(self, role: str, *, error: bool = False) -> None:
        """A request answered (or failed: error) by `role`."""
        self._add(role, error=error, request=True)

    def marked_wrong(self, role: str) -> None:
        """Feedback marked a decision `role` answered wrong: an error, not another request."""
        self._add(role, error=True, request=False)

    def _add(self, role: str, *, error: bool, request: bool) -> None:
        with self._lock:
            now = self.clock()
            if request:
                self._events.append((now, role, False))
            if error:
                self._events.append((now, role + "!", True))

    def counts(self) -> dict[str, RoleCounts]:
        """Requests and errors per role within the window (older events dropped)."""
        with self._lock:
            horizon = self.clock() - self.settings.window_seconds
            while self._events and self._events[0][0] < horizon:
                self._events.popleft()
            events = list(self._events)
        return {
            role: RoleCounts(
                requests=sum(1 for _, r, _e in events if r == role),
                errors=sum(1 for _, r, _e in events if r == role + "!"),
            )
            for role in ROLES
        }

    def regressed(self) -> dict[str, RoleCounts] | None:
        """The counts when the canary is past the champion's error rate by more than the margin, with
        at least the minimum of requests in the window; None while it holds."""
        counts = self.counts()
        canary, champion = counts["canary"], counts["champion"]
        if canary.requests < self.settings.min_requests:
            return None
        return counts if canary.rate > champion.rate + self.settings.error_margin else None
