"""The node-side probes' readers and measurements, on this machine (real files, real tools where
they are cheap); the lab test runs them on every lab host."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aifactory.runtime.health import probes
from aifactory.runtime.health.model import HostTask


def test_memory_available_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        4000000 kB\nMemFree:  100 kB\nMemAvailable:    1000000 kB\n")
    (found,) = probes.memory_available(meminfo)
    assert (found.check, found.value, found.unit) == ("memory-available", 25.0, "%")
    meminfo.write_text("MemTotal: 4000000 kB\n")
    (missing,) = probes.memory_available(meminfo)
    assert missing.value is None and missing.error == "no MemTotal/MemAvailable"


def test_mount_options_of_the_mount_in_effect(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "36 25 0:32 / /srv/share rw,relatime shared:1 - nfs4 server:/export rw\n"
        "37 36 0:33 / /srv/share ro,relatime shared:2 - nfs4 server:/export ro\n"
        "38 25 0:34 / /srv/with\\040space rw - tmpfs tmpfs rw\n"
    )
    assert probes.mount_options("/srv/share", mountinfo) == ["ro", "relatime"]  # the later mount wins
    assert probes.mount_options("/srv/with space", mountinfo) == ["rw"]
    assert probes.mount_options("/srv", mountinfo) is None


def test_iperf_results_and_failures_are_read() -> None:
    good = json.dumps({"end": {"sum_received": {"bits_per_second": 2.5e9}}})
    assert probes._iperf_measurement("peer", 0, good).value == 2.5
    refused = json.dumps({"error": "unable to connect to server: Connection refused", "end": {}})
    failed = probes._iperf_measurement("peer", 0, refused)
    assert failed.value is None and failed.error == "iperf3: unable to connect to server: Connection refused"
    partial = probes._iperf_measurement("peer", 0, json.dumps({"end": {}}))
    assert partial.value is None and "sum_received" in (partial.error or "")
    assert probes._iperf_measurement("peer", 1, "").error == "iperf3 exited 1"


REACH = """
import json
from aifactory.runtime.health import probes
from aifactory.runtime.health.model import HostTask, Peer
peers = (Peer("a", "mgmt", "127.0.0.1"), Peer("b", "mgmt", "10.99.99.9"), Peer("c", "compute", "127.0.0.1"))
found = probes.reachability(HostTask(host="h", level="quick", peers=peers))
print(json.dumps({m.subject: m.value for m in found}))
"""


def test_reachability_counts_peers_that_do_not_answer() -> None:
    """In a network namespace of its own: loopback answers (port 22 refused proves the path), an
    address without a route does not."""
    argv = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1"', sys.executable, REACH]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"cannot make a network namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"compute": 0.0, "mgmt": 1.0}


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed (scripts/setup.sh installs it)")
def test_fio_measures_write_and_read(tmp_path: Path) -> None:
    write, read = probes.fio_throughput(str(tmp_path), "h", 4)
    assert (write.check, read.check) == ("storage-write", "storage-read")
    assert write.value and write.value > 0 and read.value and read.value > 0
    assert not list(tmp_path.iterdir())  # the probe file is gone


def test_a_missing_tool_is_a_failed_measurement() -> None:
    task = HostTask(
        host="h",
        level="quick",
        services=("munge",),
        service_command="/nonexistent/supervisor",
        service_manager="supervised",
    )
    (found,) = probes.service_state(task)
    assert found.value is None and "not installed" in (found.error or "")


def test_deployed_services_are_checked_where_their_unit_is_installed(tmp_path: Path) -> None:
    """The runtime's server counts only on a host where deploy installed its unit (the scheduler's
    own lab runs health before any deploy); there, not running is a failure like any service."""
    task = HostTask(
        host="n1",
        level="quick",
        services=(),
        deployed_services=("aifactory-serve",),
        service_manager="supervised",
        service_command="false",
    )
    assert probes.service_state(task, unit_dir=tmp_path) == []
    (tmp_path / "aifactory-serve.service").write_text("[Service]\nExecStart=/bin/true\n")
    (found,) = probes.service_state(task, unit_dir=tmp_path)
    assert (found.check, found.subject, found.value) == ("service-running", "aifactory-serve", 0.0)


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2")
def test_link_state_reads_up_and_carrier_in_a_namespace() -> None:
    """A veth pair in a throwaway network namespace (root; no address, no route): both ends up and
    running; one end down: it reads down, and its peer up but without carrier reads down too."""
    netns = "aif-test-links"
    subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:

        def ip(*argv: str) -> None:
            subprocess.run(["ip", "-n", netns, *argv], check=True)

        def states() -> dict[str, float | None]:
            program = (
                "import json\n"
                "from aifactory.runtime.health import probes\n"
                "from aifactory.runtime.health.model import HostTask, Link\n"
                "links = (Link('a', 'va'), Link('b', 'vb'), Link('c', 'nosuch0'))\n"
                "task = HostTask('n1', 'quick', links=links)\n"
                "print(json.dumps({m.subject: m.value for m in probes.link_state(task)}))\n"
            )
            done = subprocess.run(
                ["ip", "netns", "exec", netns, sys.executable, "-c", program],
                capture_output=True,
                text=True,
                check=True,
            )
            return dict(json.loads(done.stdout))

        ip("link", "add", "va", "type", "veth", "peer", "name", "vb")
        ip("link", "set", "va", "up")
        ip("link", "set", "vb", "up")
        assert states() == {"a": 1.0, "b": 1.0, "c": None}
        ip("link", "set", "vb", "down")
        assert states() == {"a": 0.0, "b": 0.0, "c": None}
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
