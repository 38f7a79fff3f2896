"""Commands on a site's hosts over the site's Connection: ssh from the control host to the host's
management address, with the ssh options the Connection gives Ansible (config, keys, known_hosts).
Host keys are checked as for Ansible; nothing here knows whether the hosts are a lab."""

from __future__ import annotations

import os
import select
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from aifactory.connection import Connection

SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=15")


@dataclass(frozen=True)
class RemoteResult:
    returncode: int
    stdout: str
    stderr: str
    sent_at: float  # wall clock here just before the command started
    answered_at: float  # and just after it ended


def ssh_argv(connection: Connection, address: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs `argv` on the host at `address` (our own fixed words: the remote shell
    reads them as shlex quoted them)."""
    common = connection.ansible_cfg.get("ssh_connection", {}).get("ssh_common_args", "")
    user = connection.ansible_cfg.get("defaults", {}).get("remote_user") or connection.inventory_vars.get(
        "ansible_user", "root"
    )
    ssh = ["ssh", *shlex.split(common), *SSH_OPTIONS, f"{user}@{address}", "--", shlex.join(argv)]
    return connection.control_command(ssh)


def run_on_host(
    connection: Connection, address: str, argv: Sequence[str], *, input_text: str | None, timeout: float
) -> RemoteResult:
    command = ssh_argv(connection, address, argv)
    sent = time.time()
    try:
        done = subprocess.run(
            command,
            input=input_text,
            env={**os.environ, **connection.env},
            cwd="/",
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return RemoteResult(124, out, f"no answer within {timeout:g} s", sent, time.time())
    return RemoteResult(done.returncode, done.stdout, done.stderr, sent, time.time())


# Prints this host's wall clock once per line it reads: an exchange over one open ssh session costs
# one round trip of the pipe, not an ssh login (which can take a second on a loaded control host).
_ECHO_TIME = "import sys, time\nfor _ in sys.stdin:\n    print(repr(time.time()), flush=True)\n"


@dataclass(frozen=True)
class ClockSample:
    sent_at: float
    remote: float
    answered_at: float

    @property
    def bound(self) -> float:
        """|offset| at most: the host's reading against the exchange's midpoint, plus half its length."""
        middle = (self.sent_at + self.answered_at) / 2
        return abs(self.remote - middle) + (self.answered_at - self.sent_at) / 2


def clock_samples(
    connection: Connection, address: str, python: str, *, rounds: int, timeout: float
) -> tuple[list[ClockSample], str]:
    """`rounds` time exchanges with the host over one ssh session; the samples and any error text."""
    command = ssh_argv(connection, address, [python, "-u", "-c", _ECHO_TIME])
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **connection.env},
        cwd="/",
        text=True,
        bufsize=1,
    )
    assert process.stdin is not None and process.stdout is not None
    samples: list[ClockSample] = []
    deadline = time.monotonic() + timeout
    try:
        for _ in range(rounds):
            sent = time.time()
            process.stdin.write("\n")
            process.stdin.flush()
            line = _read_line(process.stdout, deadline)
            answered = time.time()
            if line is None:
                break
            try:
                samples.append(ClockSample(sent, float(line), answered))
            except ValueError:
                break
    except OSError:
        pass
    finally:
        error = _finish(process)
    return samples, error


def _read_line(stream: IO[str], deadline: float) -> str | None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    ready, _, _ = select.select([stream], [], [], remaining)
    if not ready:
        return None
    line = stream.readline()
    return line.strip() or None


def _finish(process: subprocess.Popen[str]) -> str:
    try:
        _, stderr = process.communicate(timeout=10)  # closes stdin: the host's loop ends
    except (subprocess.TimeoutExpired, OSError, ValueError):
        process.kill()
        _, stderr = process.communicate()
    return (stderr or "").strip()[-300:]
