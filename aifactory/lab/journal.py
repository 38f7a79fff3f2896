"""The lab's journal: every object `lab up` makes is written down *before* it is made.

`lab down` undoes what the journal lists (newest first), so it can clean up after an `up` that was
killed halfway. One JSON object per line, flushed and fsynced at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JOURNAL = "journal.jsonl"


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of a process (clock ticks since boot): tells a pid from its reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass(frozen=True)
class Entry:
    kind: str  # netns | process | machine-dir | secret | secret-store
    name: str
    detail: dict[str, Any]


class Journal:
    def __init__(self, folder: Path) -> None:
        self.path = folder / JOURNAL

    def add(self, kind: str, name: str, **detail: Any) -> None:
        line = json.dumps({"kind": kind, "name": name, **detail}, sort_keys=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def add_process(self, name: str, pid: int) -> None:
        self.add("process", name, pid=pid, start=process_start_time(pid))

    def entries(self) -> Iterator[Entry]:
        """Entries oldest first; a torn last line (a crash while writing) is skipped."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                raw = json.loads(line)
            except ValueError:
                continue
            kind, name = raw.pop("kind", None), raw.pop("name", None)
            if isinstance(kind, str) and isinstance(name, str):
                yield Entry(kind, name, raw)

    def same_process(self, entry: Entry) -> bool:
        """Is the journalled process still the one we started (not a reused pid)?"""
        pid = int(entry.detail["pid"])
        return entry.detail.get("start") is not None and process_start_time(pid) == entry.detail["start"]
