"""Calls made from another network namespace (aifactory.netns), as the BMC calls of `replace` and
`upgrade` are made from the lab's control host: a real namespace (`ip netns`), real sockets, and the
project's Redfish client against the sushy-tools emulator listening inside it."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aifactory.errors import AifactoryError, ProvisionError
from aifactory.netns import NetworkNamespace
from aifactory.provision.redfish import BmcCredentials, RedfishClient
from tests.provision.emulator import PASSWORD, USER, Emulator

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making a network namespace needs root")


@pytest.fixture
def namespace() -> Iterator[NetworkNamespace]:
    name = f"aif-nstest{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        with NetworkNamespace(Path("/run/netns") / name) as entered:
            yield entered
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def _port_free_here() -> int:
    """A loopback port nothing listens on in this process's network (checked by a refused connect)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_sockets_made_in_a_call_belong_to_the_namespace(namespace: NetworkNamespace) -> None:
    port = _port_free_here()
    listener = namespace.run(lambda: socket.create_server(("127.0.0.1", port)))
    with listener:
        with pytest.raises(ConnectionRefusedError):  # this process's loopback has no such listener
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        inside = namespace.run(lambda: socket.create_connection(("127.0.0.1", port), timeout=5))
        with inside, listener.accept()[0] as accepted:
            inside.sendall(b"ping")
            assert accepted.recv(4) == b"ping"


def test_the_calling_thread_keeps_its_own_network(namespace: NetworkNamespace) -> None:
    def netns_inode() -> int:
        return os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net").st_ino

    assert namespace.run(netns_inode) == namespace.path.stat().st_ino
    assert netns_inode() == os.stat("/proc/self/ns/net").st_ino != namespace.path.stat().st_ino


def test_an_exception_in_the_namespace_is_raised_to_the_caller(namespace: NetworkNamespace) -> None:
    def fails() -> None:
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        namespace.run(fails)


def test_a_namespace_that_cannot_be_opened_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AifactoryError) as refused:
        NetworkNamespace(tmp_path / "no-such-namespace")
    assert refused.value.code == "netns-unavailable" and "no-such-namespace" in refused.value.message


def test_the_redfish_client_reaches_a_bmc_only_from_the_namespace_it_is_given(
    namespace: NetworkNamespace, tmp_path: Path
) -> None:
    machine = {"uuid": "6f1d3a52-2b7e-4c1e-9d0a-00000000ab01", "name": "in-ns", "power_state": "Off"}
    emulator = Emulator(tmp_path / "bmc", _port_free_here(), network=namespace).start([machine])
    try:
        credentials = BmcCredentials.parse(f"{USER}:{PASSWORD}", reference="secret://test/bmc")
        through = RedfishClient(emulator.endpoint, credentials, host="h1", network=namespace, attempts=1)
        assert through.find_system()["UUID"] == machine["uuid"]
        here = RedfishClient(emulator.endpoint, credentials, host="h1", timeout=3, attempts=1)
        with pytest.raises(ProvisionError) as unreachable:
            here.systems()
        assert unreachable.value.code == "bmc-unreachable"
    finally:
        emulator.stop()
