"""HAProxy's runtime API, the front door's admin socket (`stats socket ... level admin`): drain a serving
node so that no new connection goes to it while those it holds finish, put it back, and read each
node's state. The upgrade drains a node at the front door before touching it (docs/runtime.md).

One command per connection (HAProxy's non-interactive mode: it answers, then closes), sent on this
machine's socket, or through a `Channel` where the socket is on another host's (the upgrade runs
`python -m aifactory.frontdoor.relay` on the control host: aifactory.lifecycle.site_parts). Backend and
server names are the plan's (a backend name, host names): each is checked before it goes into a
command, so a name can never add a second command (`;` and newlines separate commands there).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from aifactory.errors import FrontDoorError

State = Literal["ready", "drain", "maint"]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}")  # HAProxy's identifiers, less its odd ones
# srv_admin_state bits (HAProxy's SRV_ADMF_*): forced/inherited/resolved maintenance, forced/inherited drain
_MAINT_BITS, _DRAIN_BITS = 0x01 | 0x02 | 0x04 | 0x20, 0x08 | 0x10
_OPERATIONAL = {0: "stopped", 1: "starting", 2: "running", 3: "stopping"}
_MAX_ANSWER = 1 << 20


@dataclass(frozen=True)
class ServerState:
    """One server of a backend as `show servers state` reports it."""

    backend: str
    name: str
    address: str
    port: int
    operational: str  # stopped / starting / running / stopping (health checks' verdict)
    admin: State  # what an admin (or drain) set: ready, drain or maint

    @property
    def takes_new_connections(self) -> bool:
        return self.admin == "ready" and self.operational == "running"


class Channel(Protocol):
    def send(self, line: str) -> str:
        """Send one checked command line to HAProxy's admin socket; its whole answer."""


@dataclass(frozen=True)
class RuntimeApi:
    """The admin socket of one HAProxy (a UNIX socket path on the front door's host)."""

    socket_path: Path
    timeout: float = 5.0
    channel: Channel | None = None  # None: the socket is on this machine

    def set_state(self, backend: str, server: str, state: State) -> None:
        """drain: no new connections, established ones go on; maint: none at all; ready: back in."""
        answer = self.command(f"set server {_name(backend)}/{_name(server)} state {state}")
        if answer.strip():  # HAProxy answers nothing when the command took
            raise FrontDoorError(f"HAProxy refused to set {backend}/{server} to {state}: {answer.strip()}")

    def drain(self, backend: str, server: str) -> None:
        self.set_state(backend, server, "drain")

    def ready(self, backend: str, server: str) -> None:
        self.set_state(backend, server, "ready")

    def servers(self, backend: str) -> list[ServerState]:
        """Every server of the backend, in HAProxy's order."""
        return parse_servers_state(self.command(f"show servers state {_name(backend)}"))

    def sessions(self, backend: str) -> dict[str, int]:
        """Server name -> connections it holds now (`show stat`'s scur), for every server of the backend."""
        return parse_sessions(self.command(f"show stat {_name(backend)} 4 -1"))

    def command(self, line: str) -> str:
        """Send one command, return HAProxy's whole answer."""
        if "\n" in line or ";" in line:
            raise FrontDoorError(f"not one HAProxy command: {line!r}")
        if self.channel is not None:
            return self.channel.send(line)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.settimeout(self.timeout)
                connection.connect(str(self.socket_path))
                connection.sendall(line.encode("ascii") + b"\n")
                return _read_all(connection).decode("utf-8", "replace")
        except OSError as exc:
            raise FrontDoorError(
                f"cannot reach HAProxy's runtime API at {self.socket_path}: {exc}",
                hint="is the front door running (the front_door role's haproxy service)?",
            ) from None


def parse_servers_state(answer: str) -> list[ServerState]:
    """`show servers state` (format version 1): a version line, a `#` header naming the columns, rows."""
    lines = [line for line in answer.splitlines() if line.strip()]
    if not lines or lines[0].strip() != "1":
        raise FrontDoorError(f"HAProxy's servers state is not format 1: {answer[:200]!r}")
    if len(lines) < 2 or not lines[1].startswith("#"):
        raise FrontDoorError(f"HAProxy's servers state has no column line: {answer[:200]!r}")
    columns = lines[1].lstrip("#").split()
    states = []
    for line in lines[2:]:
        row = dict(zip(columns, line.split(), strict=False))
        try:
            admin_bits = int(row["srv_admin_state"])
            states.append(
                ServerState(
                    backend=row["be_name"],
                    name=row["srv_name"],
                    address=row["srv_addr"],
                    port=int(row["srv_port"]),
                    operational=_OPERATIONAL.get(int(row["srv_op_state"]), "unknown"),
                    admin="maint"
                    if admin_bits & _MAINT_BITS
                    else "drain"
                    if admin_bits & _DRAIN_BITS
                    else "ready",
                )
            )
        except (KeyError, ValueError):
            raise FrontDoorError(
                f"HAProxy's servers state has a row it cannot read: {line[:200]!r}"
            ) from None
    return states


def parse_sessions(answer: str) -> dict[str, int]:
    """`show stat` CSV: a `# pxname,svname,...` header, one row per proxy or server."""
    lines = [line for line in answer.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# "):
        raise FrontDoorError(f"HAProxy's stats have no column line: {answer[:200]!r}")
    columns = lines[0][2:].split(",")
    sessions = {}
    for line in lines[1:]:
        row = dict(zip(columns, line.split(","), strict=False))
        if row.get("svname") in ("FRONTEND", "BACKEND"):
            continue
        try:
            sessions[row["svname"]] = int(row["scur"] or 0)
        except (KeyError, ValueError):
            raise FrontDoorError(f"HAProxy's stats have a row it cannot read: {line[:200]!r}") from None
    return sessions


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise FrontDoorError(f"{value!r} is not a backend or server name HAProxy's runtime API takes")
    return value


def _read_all(connection: socket.socket) -> bytes:
    parts, size = [], 0
    while chunk := connection.recv(65536):
        parts.append(chunk)
        size += len(chunk)
        if size > _MAX_ANSWER:
            raise FrontDoorError(f"HAProxy's answer is over {_MAX_ANSWER} bytes")
    return b"".join(parts)
