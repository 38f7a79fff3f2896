"""Waiting in tests: on a condition, with a deadline scaled for a loaded machine, never on a bare sleep.

    from waiting import scaled, wait_for
    wait_for(lambda: server.ready(), what="the server to answer /healthz", timeout=20)
    subprocess.run(argv, timeout=scaled(120))

`timeout` is what the wait takes on an idle machine, with room to spare. It is multiplied by
AIFACTORY_TEST_TIME_SCALE (default 4: the 2-core development machine shared with other work runs
lab tests several times slower than alone; CI may set more). A wait that passes returns as soon
as its condition holds, so the scale costs nothing unless something is really broken; one that
gives up says what it waited for, how long, and (with `detail`) what it last saw.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

SCALE_ENV = "AIFACTORY_TEST_TIME_SCALE"
DEFAULT_SCALE = 4.0

T = TypeVar("T")


def time_scale() -> float:
    raw = os.environ.get(SCALE_ENV, "")
    try:
        scale = float(raw) if raw else DEFAULT_SCALE
    except ValueError:
        raise ValueError(f"{SCALE_ENV}={raw!r} is not a number") from None
    if scale <= 0:
        raise ValueError(f"{SCALE_ENV}={raw!r} must be positive")
    return scale


def scaled(seconds: float) -> float:
    """A deadline of `seconds` on an idle machine, stretched for this one."""
    return seconds * time_scale()


def wait_for(
    condition: Callable[[], T],
    *,
    what: str,
    timeout: float,
    every: float = 0.1,
    detail: Callable[[], str] | None = None,
) -> T:
    """Call `condition` until it returns something true, and return that; give up after
    `scaled(timeout)` seconds with an AssertionError naming `what` (and `detail()`, if given)."""
    limit = scaled(timeout)
    deadline = time.monotonic() + limit
    while True:
        value = condition()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            seen = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"gave up after {limit:.0f} s waiting for {what}{seen}")
        time.sleep(min(every, remaining))
