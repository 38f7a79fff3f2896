"""`aifactory bundle build` shows its progress on a terminal, and nothing when its output is piped.

The real command builds the lab's bundle twice (downloads come from the cache the other bundle tests
fill): once under a pseudo-terminal (the `pty` module), where the progress line must be redrawn at
least every two seconds from start to end, and once with pipes, where standard error must stay empty.
The two-second bound is the acceptance rule for a user watching the terminal; the line is redrawn
every half second, so a loaded machine has four times the room.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from waiting import scaled

from .conftest import LAB_SITE, STAMP, Signer

SCRIPT = Path(sys.executable).with_name("aifactory")
MARK = b"bundle build | "
# The drawn line: step, items (done/total), bytes (done/total), seconds since the start.
LINE = re.compile(rb"bundle build \| [a-z ]+: [\d,/]+ items(?:, [\d.]+ [kMG]?B(?:/[\d.]+ [kMG]?B)?)?, \d+ s")
# The line redraws every half second; allow four times that, times the loaded-machine scale (a build
# step that draws nothing for tens of seconds still fails, as it did before the progress line existed).
LONGEST_SILENCE = 2.0


def _command(source: Path, signer: Signer, output: Path, *extra: str) -> list[str]:
    return [
        str(SCRIPT),
        "bundle",
        "build",
        str(source / LAB_SITE),
        "--key",
        str(signer.key),
        "-o",
        str(output),
        "--timestamp",
        str(STAMP),
        "--source",
        str(source),
        "--no-apt",
        *extra,
    ]


def _environment(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "AIFACTORY_STATE_HOME": str(tmp_path / "state"), "TERM": "xterm"}


def _read_terminal(
    process: subprocess.Popen[bytes], master: int, deadline: float
) -> list[tuple[float, bytes]]:
    """Every chunk the terminal received, with the time it came, until the process ends."""
    chunks: list[tuple[float, bytes]] = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the other side closed: the process is gone
                break
            if not data:
                break
            chunks.append((time.monotonic(), data))
        elif process.poll() is not None:
            break
    return chunks


@pytest.mark.slow
def test_progress_on_a_terminal_and_none_when_piped(
    tmp_path: Path, signer: Signer, source_snapshot: Path
) -> None:
    master, replica = pty.openpty()
    started = time.monotonic()
    process = subprocess.Popen(
        _command(source_snapshot, signer, tmp_path / "tty" / "lab.tar"),
        stdin=subprocess.DEVNULL,
        stdout=replica,
        stderr=replica,
        env=_environment(tmp_path),
    )
    os.close(replica)
    try:
        chunks = _read_terminal(process, master, deadline=started + 1800)
    finally:
        os.close(master)
    assert process.wait(timeout=60) == 0, b"".join(c for _, c in chunks)[-2000:].decode(errors="replace")
    ended = time.monotonic()
    draws = [at for at, data in chunks if MARK in data]
    seen = b"".join(data for _, data in chunks)
    assert draws, seen[-2000:]
    moments = [started, *draws, ended]
    silences = [later - earlier for earlier, later in zip(moments, moments[1:], strict=False)]
    # From the start to the first draw a command only imports Python; count the rest of the run.
    assert max(silences[1:]) <= scaled(LONGEST_SILENCE), f"no progress for {max(silences[1:]):.1f} s"
    for step in (b"wheels", b"hash payload", b"write archive"):
        assert MARK + step in seen
    lines = [line.decode() for line in LINE.findall(seen)]
    assert any(" MB" in line or " GB" in line for line in lines), lines[-5:]  # bytes, counts, seconds
    assert b"for site lab" in seen.rsplit(b"\x1b[K", 1)[-1]  # the result follows the cleared line

    piped = subprocess.run(
        _command(source_snapshot, signer, tmp_path / "piped" / "lab.tar", "--format", "json"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=_environment(tmp_path),
        timeout=1800,
        check=False,
    )
    assert piped.returncode == 0, piped.stderr.decode()[-2000:]
    assert piped.stderr == b""
    assert json.loads(piped.stdout)["site"] == "lab"
