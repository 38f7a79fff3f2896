"""Keeping the forward pass on CPUs of its own (`aifactory-serve --forward-cpus`).

On a CPU-only node the batcher's forward pass is the scarce resource, and every other thread of the
server (event loop, authorization, decision log) wakes hundreds of times a second; left to the OS,
those wakeups preempt the forward pass (measured on a 2-core host: ~600 involuntary switches a
second, a batch-32 pass stretched from 19 to 23-29 ms). Pinning gives the batcher threads the named
CPUs and keeps the server's other threads on the rest, as CPU inference servers are commonly tuned.
Linux only (`sched_setaffinity`); the split applies to every thread of the server's process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def parse_cpu_list(text: str) -> frozenset[int]:
    """`0`, `0,2`, `0-3,6`: the Linux cpu-list syntax (as in `taskset -c`)."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last) if dash else int(first)
        except ValueError:
            raise ValueError(f"{text!r} is not a CPU list like 0 or 0,2 or 0-3") from None
        if low < 0 or high < low:
            raise ValueError(f"{part.strip()!r} in {text!r} is not a CPU range")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


@dataclass(frozen=True)
class CpuSplit:
    """The CPUs the forward pass runs on, and the ones left to the server's other threads."""

    forward: frozenset[int]
    others: frozenset[int]

    @classmethod
    def of(cls, forward: frozenset[int], allowed: frozenset[int] | None = None) -> CpuSplit:
        """Split this process's allowed CPUs; ValueError when `forward` is not a strict subset of them."""
        allowed = frozenset(os.sched_getaffinity(0)) if allowed is None else allowed
        outside = forward - allowed
        if outside:
            raise ValueError(
                f"CPUs {_show(outside)} are not available to this process (it may use {_show(allowed)})"
            )
        if forward == allowed:
            raise ValueError(
                f"the forward pass would take every CPU this process may use ({_show(allowed)}); "
                "leave at least one to the event loop"
            )
        return cls(forward, allowed - forward)

    def keep_others_off_forward(self) -> None:
        """Move every thread of this process onto `others`, and so every thread started from now on;
        the batchers move to `forward` when they start. The server owns its process (aifactory-serve):
        torch may have started threads of its own before the server did."""
        for task in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(task), self.others)
            except ProcessLookupError:  # the thread ended meanwhile
                continue

    def move_to_forward(self) -> None:
        """Move the calling thread (a batcher) onto `forward`."""
        os.sched_setaffinity(0, self.forward)


def _show(cpus: frozenset[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))
