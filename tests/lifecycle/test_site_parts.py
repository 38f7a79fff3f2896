"""The upgrade's front door part on a real HAProxy (Debian's): a drained server gets no new connection
and the drain returns once the connection it held ended; re-enabled, it returns once HAProxy's
health checks find the server up, and fails when they never do. Through the relay on the "control
host" (this machine: a Connection with no prefix), as the upgrade reaches the lab's.

The servers behind it are plain TCP listeners: what is under test is HAProxy's side (drain, sessions,
health checks), not the runtime (tests/runtime/test_front_door.py puts a real node behind it)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from waiting import wait_for

from aifactory.connection import Connection
from aifactory.errors import FrontDoorError
from aifactory.frontdoor.runtime_api import RuntimeApi, parse_sessions
from aifactory.lifecycle.site_parts import BACKEND, ControlHostChannel, HaproxyDoor

HAPROXY = "/usr/sbin/haproxy"  # Debian 12's haproxy package (scripts/setup.sh installs it)
SERVERS = ("gpu-001", "gpu-002")


class Listener:
    """A TCP server that accepts and holds connections until the client closes them."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            threading.Thread(target=self._hold, args=(connection,), daemon=True).start()

    @staticmethod
    def _hold(connection: socket.socket) -> None:
        with connection:
            while connection.recv(4096):
                pass

    def close(self) -> None:
        # shutdown first: on Linux a close alone leaves the socket listening while accept() waits on it
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.socket.close()


@dataclass
class Door:
    port: int
    api: RuntimeApi
    listeners: dict[str, Listener]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def door(tmp_path: Path) -> Iterator[Door]:
    assert Path(HAPROXY).exists(), "Debian's haproxy is needed (scripts/setup.sh installs it)"
    listeners = {name: Listener() for name in SERVERS}
    port = _free_port()
    servers = "\n".join(
        f"    server {name} 127.0.0.1:{listener.port} check inter 200ms fall 1 rise 1"
        for name, listener in listeners.items()
    )
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        f"global\n    stats socket {tmp_path / 'admin.sock'} mode 600 level admin\n"
        "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n"
        f"frontend door\n    bind 127.0.0.1:{port}\n    default_backend {BACKEND}\n"
        f"backend {BACKEND}\n    balance leastconn\n{servers}\n"
    )
    process = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    channel = ControlHostChannel(Connection(description="this host"), socket_path=tmp_path / "admin.sock")
    api = RuntimeApi(tmp_path / "admin.sock", channel=channel)
    try:
        wait_for(
            lambda: (
                (tmp_path / "admin.sock").exists()
                and all(s.takes_new_connections for s in api.servers(BACKEND))
                or None
            ),
            what="HAProxy to find both servers up",
            timeout=30,
        )
        yield Door(port, api, listeners)
    finally:
        process.terminate()
        process.wait(timeout=10)
        for listener in listeners.values():
            listener.close()


def _held_by(door: Door) -> str:
    """The server holding the one client connection open now."""
    found = wait_for(
        lambda: [name for name, count in door.api.sessions(BACKEND).items() if count] or None,
        what="HAProxy to count the client's connection",
        timeout=10,
    )
    assert len(found) == 1, found
    return str(found[0])


def test_a_drain_waits_for_the_servers_connection_to_end_and_sends_it_no_new_one(door: Door) -> None:
    part = HaproxyDoor(door.api, frozenset(SERVERS), drain_timeout_s=20, poll_s=0.1)
    client = socket.create_connection(("127.0.0.1", door.port))
    held = _held_by(door)
    threading.Timer(1.0, client.close).start()
    started = time.monotonic()
    part.drain([held])
    assert time.monotonic() - started >= 0.9  # it waited for the client to close
    assert {s.name: s.admin for s in door.api.servers(BACKEND)}[held] == "drain"
    others = [socket.create_connection(("127.0.0.1", door.port)) for _ in range(3)]
    try:
        wait_for(lambda: sum(door.api.sessions(BACKEND).values()) == 3 or None, what="3 sessions", timeout=10)
        assert door.api.sessions(BACKEND)[held] == 0  # every new connection went to the other
    finally:
        for other in others:
            other.close()


def test_enable_returns_once_the_server_takes_connections_again(door: Door) -> None:
    part = HaproxyDoor(
        door.api, frozenset(SERVERS), drain_timeout_s=5, up_timeout_s=20, settle_s=1, poll_s=0.1
    )
    part.drain(["gpu-001", "not-behind-the-door"])  # a host the door does not send to is left alone
    part.enable(["gpu-001"])
    assert all(s.takes_new_connections for s in door.api.servers(BACKEND))


def test_enable_fails_when_the_health_checks_never_find_the_server_up(door: Door) -> None:
    part = HaproxyDoor(
        door.api, frozenset(SERVERS), drain_timeout_s=5, up_timeout_s=2, settle_s=1, poll_s=0.1
    )
    part.drain(["gpu-002"])
    door.listeners["gpu-002"].close()  # its runtime did not come back
    with pytest.raises(FrontDoorError) as raised:
        part.enable(["gpu-002"])
    assert "gpu-002" in raised.value.message and "up within 2 s" in raised.value.message


def test_the_relay_refuses_a_second_command_and_says_why(door: Door) -> None:
    with pytest.raises(FrontDoorError) as raised:
        door.api.channel.send("show info;shutdown frontend door")  # type: ignore[union-attr]
    assert "not one HAProxy command" in raised.value.message
    assert door.api.sessions(BACKEND) == {name: 0 for name in SERVERS}  # still serving, no one hurt


def test_stats_without_a_column_line_are_an_error_not_zero_sessions() -> None:
    with pytest.raises(FrontDoorError):
        parse_sessions("gpu-001,1\n")
    header = "# pxname,svname,qcur,qmax,scur,smax\n"
    rows = f"{BACKEND},gpu-001,0,0,2,3\n{BACKEND},BACKEND,0,0,2,3\n"
    assert parse_sessions(header + rows) == {"gpu-001": 2}
