"""benchmarks/process_cpu.py: reading the kernel's process accounting records (acct v3).

The records here are packed in the layout of struct acct_v3 (linux/acct.h); turning the kernel's
accounting on needs Debian's `acct`, which this suite does not install, so the kernel's own records
are read by `deploy_bench.py floor --processes` (docs/deploy.md), not here."""

from __future__ import annotations

import struct

import pytest

from benchmarks.process_cpu import (
    RECORD,
    AccountingError,
    CommandCpu,
    cpu_by_command,
    expand_comp,
    parse_records,
)


def comp(ticks: int) -> int:
    """The kernel's encode_comp_t: shift right by 3 bits (exponent + 1) until 13 bits hold it."""
    exponent = 0
    while ticks > 0x1FFF:
        ticks >>= 3
        exponent += 1
    return (exponent << 13) | ticks


def record(
    command: bytes, *, pid: int, started: int, user_ticks: int, system_ticks: int, version: int = 3
) -> bytes:
    return RECORD.pack(
        b"\0",
        bytes([version]),
        0,
        0,
        0,
        0,
        pid,
        1,
        started,
        1.5,
        comp(user_ticks),
        comp(system_ticks),
        0,
        0,
        0,
        0,
        0,
        0,
        command.ljust(16, b"\0"),
    )


def test_comp_t_keeps_large_cpu_times_to_its_precision() -> None:
    assert expand_comp(comp(123)) == 123
    big = 987_654  # ticks: 2.7 hours of CPU, more than 13 bits hold
    assert abs(expand_comp(comp(big)) - big) / big < 0.001


def test_cpu_is_summed_by_command_for_the_processes_started_in_the_window() -> None:
    data = b"".join(
        [
            record(b"aide", pid=10, started=1000, user_ticks=870, system_ticks=70),
            record(b"aide", pid=11, started=1001, user_ticks=860, system_ticks=60),
            record(b"ansible-playboo", pid=12, started=1002, user_ticks=20_000, system_ticks=1_500),
            record(b"tar", pid=13, started=999, user_ticks=500, system_ticks=0),  # before the window
            record(b"tar", pid=14, started=1011, user_ticks=500, system_ticks=0),  # after it
        ]
    )
    records = list(parse_records(data))
    assert [r.pid for r in records] == [10, 11, 12, 13, 14]
    assert records[0].command == "aide" and records[0].cpu_seconds == pytest.approx(9.4)
    by_command = cpu_by_command(records, start=1000.4, end=1010.9)
    assert [c.command for c in by_command] == ["ansible-playboo", "aide"]
    assert by_command[1] == CommandCpu("aide", 2, pytest.approx(18.6))
    assert by_command[0].cpu_seconds == pytest.approx(215.0, rel=0.001)


def test_a_file_this_reader_cannot_read_is_refused() -> None:
    with pytest.raises(AccountingError, match="version 2"):
        list(parse_records(record(b"sh", pid=1, started=1, user_ticks=1, system_ticks=1, version=2)))
    with pytest.raises(AccountingError, match="big-endian"):
        list(parse_records(record(b"sh", pid=1, started=1, user_ticks=1, system_ticks=1, version=0x83)))
    with pytest.raises(AccountingError, match="whole number"):
        list(parse_records(b"\0" * (RECORD.size + 3)))
    assert struct.calcsize("<ccHIIIIIIf8H16s") == RECORD.size == 64
