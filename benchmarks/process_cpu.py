"""Where a benchmark's CPU went, process by process: Linux process accounting (BSD acct, version 3).

`accounting(path)` turns the kernel's process accounting on into `path` (stock `accton`, Debian's
`acct` package) and off again; the kernel then appends one record per process that ends, on the
whole machine and in every namespace below this one (the lab's hosts included), with its command
name, start time and CPU time. `cpu_by_command(read_records(path), start, end)` sums the CPU of the
processes started between two times by command name. A process still running when accounting is
turned off has no record: what the benchmark leaves running (a service) is not counted.

Opt-in (`deploy_bench.py floor --processes`): accounting is machine-wide, and turning it on replaces
any accounting the machine had (`accton` cannot tell what was set before).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# struct acct_v3 (linux/acct.h): flag, version, tty, exitcode, uid, gid, pid, ppid, btime,
# etime (a float), utime, stime, mem, io, rw, minflt, majflt, swaps (comp_t each), comm[16].
RECORD = struct.Struct("<ccHIIIIIIf8H16s")
ACCT_VERSION = 3
ACCT_BYTEORDER = 0x80  # set in ac_version by a big-endian kernel
AHZ = 100  # the unit of ac_utime and ac_stime: ticks of 1/AHZ s


class AccountingError(RuntimeError):
    """Process accounting cannot be used here (no `accton`, or a file this reader cannot read)."""


@dataclass(frozen=True)
class ProcessRecord:
    command: str
    pid: int
    ppid: int
    started: int  # Unix seconds
    cpu_seconds: float  # user + system


@dataclass(frozen=True)
class CommandCpu:
    command: str
    processes: int
    cpu_seconds: float


def expand_comp(value: int) -> int:
    """comp_t: a 13-bit mantissa and a 3-bit base-8 exponent."""
    return (value & 0x1FFF) << (3 * (value >> 13))


def parse_records(data: bytes) -> Iterator[ProcessRecord]:
    if len(data) % RECORD.size:
        raise AccountingError(f"not a whole number of {RECORD.size}-byte acct v3 records")
    for fields in RECORD.iter_unpack(data):
        if fields[1][0] & ACCT_BYTEORDER:
            raise AccountingError("big-endian acct records: this reader reads little-endian ones")
        version = fields[1][0] & 0x0F
        if version != ACCT_VERSION:
            raise AccountingError(f"an acct record of version {version}, this reader reads {ACCT_VERSION}")
        yield ProcessRecord(
            command=fields[18].split(b"\0", 1)[0].decode(errors="replace"),
            pid=fields[6],
            ppid=fields[7],
            started=fields[8],
            cpu_seconds=(expand_comp(fields[10]) + expand_comp(fields[11])) / AHZ,
        )


def read_records(path: Path) -> list[ProcessRecord]:
    return list(parse_records(path.read_bytes()))


def cpu_by_command(records: Iterable[ProcessRecord], start: float, end: float) -> list[CommandCpu]:
    """The processes started within [start, end] (whole seconds: the record's start time is), summed
    by command name, the most CPU first."""
    totals: dict[str, tuple[int, float]] = {}
    for record in records:
        if int(start) <= record.started <= end:
            count, cpu = totals.get(record.command, (0, 0.0))
            totals[record.command] = (count + 1, cpu + record.cpu_seconds)
    return sorted(
        (CommandCpu(name, count, cpu) for name, (count, cpu) in totals.items()),
        key=lambda c: (-c.cpu_seconds, c.command),
    )


def accton() -> str:
    """The `accton` to turn accounting on and off with (checked before a benchmark brings a lab up)."""
    found = shutil.which("accton")
    if found is None:
        raise AccountingError("no `accton` on the PATH: install Debian's `acct` (apt-get install acct)")
    return found


@contextmanager
def accounting(path: Path) -> Iterator[Path]:
    command = accton()
    path.touch(mode=0o600)
    subprocess.run([command, str(path)], check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run([command, "off"], check=True, capture_output=True)
