"""Handing work between the server's event loop and its worker threads, with few wakeups.

Every request crosses threads several times (to authorization, the decision log's group commit,
the batcher, and back). Handing each request over on its own costs a thread wakeup (a futex
syscall, often a context switch) per request per crossing, and settling each asyncio future with
its own `call_soon_threadsafe` a write to the loop's wakeup socket; under load on a small machine
that overhead competes with the forward pass for the same cores. Here both directions go by bursts:

- `LoopOutbox`: the calls one event-loop iteration produces go to the workers as one item;
- `LoopInbox`: worker threads queue their results and wake the loop once per burst (the first
  result schedules one drain; the ones that arrive before it runs ride along).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class LoopInbox:
    """Settles futures of one event loop from any thread; one loop wakeup per burst of results."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = deque()
        self._scheduled = False

    def settle(self, future: asyncio.Future[Any], result: Any, error: BaseException | None = None) -> None:
        with self._lock:
            self._items.append((future, result, error))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody waits for these futures any more
            log.debug("event loop closed; %d results dropped", len(self._items))

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, deque()
            self._scheduled = False
        for future, result, error in items:
            if future.done():  # the request's handler went away (connection closed)
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)


class Workers:
    """A fixed set of threads running submitted calls in order; cheaper per call than an executor.

    `initializer` runs first on each thread (the server compiles the thread's policy engine there).
    A call must not raise: it settles its own future with its error (an error that escapes is
    logged and the thread goes on).
    """

    def __init__(self, count: int, *, name: str, initializer: Callable[[], None] | None = None) -> None:
        self._queue: queue.SimpleQueue[list[Callable[[], None]] | None] = queue.SimpleQueue()
        self._initializer = initializer
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}_{number}", daemon=True)
            for number in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, call: Callable[[], None]) -> None:
        self._queue.put([call])

    def submit_many(self, calls: list[Callable[[], None]]) -> None:
        """Run `calls` in order on one thread: one wakeup for the lot."""
        self._queue.put(calls)

    def shutdown(self) -> None:
        """Finish every call already submitted, then stop the threads."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        if self._initializer is not None:
            try:
                self._initializer()
            except Exception:  # noqa: BLE001 -- the calls still run, and fail closed on their own
                log.exception("worker initializer failed")
        while (calls := self._queue.get()) is not None:
            for call in calls:
                try:
                    call()
                except Exception:  # noqa: BLE001 -- a worker must outlive one bad call; its future says why
                    log.exception("worker call failed")


class LoopOutbox:
    """Gathers the calls an event-loop iteration submits and hands them to `workers` in one item."""

    def __init__(self, loop: asyncio.AbstractEventLoop, workers: Workers) -> None:
        self._loop = loop
        self._workers = workers
        self._calls: list[Callable[[], None]] = []

    def submit(self, call: Callable[[], None]) -> None:
        """From the loop's thread only."""
        self._calls.append(call)
        if len(self._calls) == 1:
            self._loop.call_soon(self._flush)  # after this iteration's other handlers

    def _flush(self) -> None:
        calls, self._calls = self._calls, []
        self._workers.submit_many(calls)
