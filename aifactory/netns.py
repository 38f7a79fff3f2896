"""Calls made from another network namespace: where the control host's traffic lives when this
process is not on the control host's network (a control host that is a network namespace of this
machine, as the lab's is: /proc/PID/ns/net of a process on it).

A `NetworkNamespace` owns one worker thread that joins the namespace (setns(2) with CLONE_NEWNET
moves only the calling thread) and runs every call given to `run` there, so that the sockets those
calls open (a Redfish client's, through requests) are the namespace's and reach only what it routes
to. Nothing falls back to this process's own network: a namespace that cannot be joined fails the
call. The edge builds one from the site's Connection (Connection.control_network); code below it
only passes it on.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from aifactory.errors import AifactoryError, ExitCode

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _unavailable(message: str, hint: str) -> AifactoryError:
    return AifactoryError(message, code="netns-unavailable", exit_code=ExitCode.CANNOT_EVALUATE, hint=hint)


class NetworkNamespace:
    """Run calls inside the network namespace at `path` (e.g. /proc/PID/ns/net)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            # Opened now: the namespace is held even if its process ends before the first call.
            self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _unavailable(
                f"cannot open the control host's network namespace {path}: {exc.strerror}",
                "check that the control host runs (for the lab: `aifactory lab status SITE`)",
            ) from None
        self._joined = threading.local()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netns")

    def __repr__(self) -> str:
        return f"NetworkNamespace({str(self.path)!r})"

    def _join(self) -> None:
        if getattr(self._joined, "done", False):
            return
        if self._fd is None:
            raise AifactoryError(
                f"the network namespace {self.path} was closed",
                code="netns-closed",
                exit_code=ExitCode.INTERNAL,
            )
        try:
            _setns(self._fd)
        except OSError as exc:
            raise _unavailable(
                f"cannot enter the control host's network namespace {self.path}: {exc.strerror}",
                "entering another network namespace needs root (CAP_SYS_ADMIN)",
            ) from None
        self._joined.done = True

    def run(self, call: Callable[[], T]) -> T:
        """`call()` in the namespace; its result, or its exception raised here."""

        def inside() -> T:
            self._join()
            return call()

        return self._worker.submit(inside).result()

    def close(self) -> None:
        self._worker.shutdown(wait=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> NetworkNamespace:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
