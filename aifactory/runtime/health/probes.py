"""The quick level's checks, run on the host itself: standard library and stock tools only (no torch).

Each check returns `Measurement`s: the value, its unit and the tool's raw output. A check that cannot
measure returns a measurement with no value and the reason; the policy never passes it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aifactory.runtime.health.model import HostTask, Link, Measurement, Peer, clipped

TOOL_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 2.0
REACH_PORT = 22  # every host runs sshd; a refused connection proves the path as well as an accepted one
IPERF_CONNECT_DEADLINE_S = 30.0  # the peer starts its server at the same moment as we do
# How long our server waits, once our own checks are done, for the peer measuring towards us: the
# peer's measurement is its first check, so only a peer that failed to start takes this long.
SERVER_GRACE_S = 90.0
# Where deploy writes service units, under systemd and under the lab's supervisor alike.
UNIT_DIR = Path("/etc/systemd/system")
# netdevice(7): SIOCGIFFLAGS reads an interface's flags; IFF_UP is "administratively up", IFF_RUNNING
# "operational" (the link has carrier: a veth whose peer is down is up but not running).
SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1
IFF_RUNNING = 0x40


def run_tool(
    argv: Sequence[str], *, timeout: float = TOOL_TIMEOUT_S, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Exit status and output (stdout, then stderr) of a stock tool; 127 when it is not installed."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    except FileNotFoundError:
        return 127, f"{argv[0]}: not installed"
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]}: no answer within {timeout:g} s"
    return done.returncode, done.stdout + done.stderr


def service_state(task: HostTask, unit_dir: Path = UNIT_DIR) -> list[Measurement]:
    """1 for each expected service that runs, 0 for one that does not; a deployed service (the
    runtime's server) is expected where its unit is installed."""
    found = []
    deployed = [name for name in task.deployed_services if (unit_dir / f"{name}.service").is_file()]
    for name in (*task.services, *deployed):
        if task.service_manager == "supervised" and task.service_command:
            argv = [task.service_command, "status", name]
        else:
            argv = ["systemctl", "is-active", name]
        code, output = run_tool(argv)
        if code == 127:
            found.append(Measurement.failed("service-running", name, "bool", output, output))
        else:
            found.append(
                Measurement("service-running", name, 1.0 if code == 0 else 0.0, "bool", clipped(output))
            )
    return found


def disk_headroom(task: HostTask) -> list[Measurement]:
    found = []
    for path in task.paths:
        try:
            stats = os.statvfs(path)
        except OSError as exc:
            found.append(Measurement.failed("disk-free", path, "%", f"statvfs: {exc.strerror}"))
            found.append(Measurement.failed("inodes-free", path, "%", f"statvfs: {exc.strerror}"))
            continue
        raw = f"blocks={stats.f_blocks} bavail={stats.f_bavail} files={stats.f_files} favail={stats.f_favail}"
        found.append(Measurement("disk-free", path, _percent(stats.f_bavail, stats.f_blocks), "%", raw))
        # A file system without an inode table (f_files 0: btrfs, some FUSE) cannot run out of them.
        inodes = 100.0 if stats.f_files == 0 else _percent(stats.f_favail, stats.f_files)
        found.append(Measurement("inodes-free", path, inodes, "%", raw))
    return found


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def memory_available(meminfo: Path = Path("/proc/meminfo")) -> list[Measurement]:
    try:
        text = meminfo.read_text()
    except OSError as exc:
        return [Measurement.failed("memory-available", "host", "%", f"{meminfo}: {exc.strerror}")]
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[key] = int(fields[0])
    total, available = values.get("MemTotal"), values.get("MemAvailable")
    raw = f"MemTotal: {total} kB\nMemAvailable: {available} kB"
    if not total or available is None:
        return [Measurement.failed("memory-available", "host", "%", "no MemTotal/MemAvailable", raw)]
    return [Measurement("memory-available", "host", _percent(available, total), "%", raw)]


def mount_options(mount_path: str, mountinfo: Path = Path("/proc/self/mountinfo")) -> list[str] | None:
    """The options of the last mount on exactly `mount_path` (the one in effect), or None."""
    options = None
    for line in mountinfo.read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and _unescape(fields[4]) == mount_path:
            options = fields[5].split(",")
    return options


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def storage_checks(task: HostTask) -> list[Measurement]:
    found = []
    for path in task.storage:
        options = mount_options(path)
        raw = f"{path}: {','.join(options) if options else 'not a mount point'}"
        writable = options is not None and "rw" in options
        found.append(Measurement("storage-mounted-rw", path, 1.0 if writable else 0.0, "bool", raw))
        if not writable:
            found.append(Measurement.failed("storage-write", path, "MiB/s", "not mounted read-write", raw))
            found.append(Measurement.failed("storage-read", path, "MiB/s", "not mounted read-write", raw))
            continue
        if task.fio_size_mib > 0:  # 0: the node's own check, which leaves throughput to the gate
            found.extend(fio_throughput(path, task.host, task.fio_size_mib))
    return found


def fio_throughput(folder: str, host: str, size_mib: int) -> list[Measurement]:
    """Sequential write (flushed to the storage before it counts) then read of one file, with fio."""
    found = []
    with tempfile.TemporaryDirectory(prefix=f".aifactory-health-{host}-", dir=folder) as scratch:
        for check, mode in (("storage-write", "write"), ("storage-read", "read")):
            argv = [
                "fio",
                f"--name=aifactory-health-{mode}",
                f"--directory={scratch}",
                "--filename=probe",
                f"--rw={mode}",
                "--bs=1M",
                f"--size={size_mib}M",
                "--ioengine=psync",
                "--end_fsync=1",
                "--output-format=json",
            ]
            code, output = run_tool(argv)
            found.append(_fio_measurement(check, folder, mode, code, output))
    return found


def _fio_measurement(check: str, folder: str, mode: str, code: int, output: str) -> Measurement:
    if code != 0:
        return Measurement.failed(check, folder, "MiB/s", f"fio exited {code}", output)
    try:
        job = json.loads(output[output.index("{") :])["jobs"][0]
        bytes_per_second = float(job[mode]["bw_bytes"])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return Measurement.failed(check, folder, "MiB/s", f"fio's JSON unreadable: {exc}", output)
    return Measurement(check, folder, round(bytes_per_second / 2**20, 1), "MiB/s", clipped(output))


def reachability(task: HostTask) -> list[Measurement]:
    """Per fabric: how many peers do not answer on that fabric's address (0 is healthy)."""
    by_fabric: dict[str, list[Peer]] = {}
    for peer in task.peers:
        by_fabric.setdefault(peer.fabric, []).append(peer)
    found = []
    with ThreadPoolExecutor(max_workers=32) as pool:
        for fabric, peers in sorted(by_fabric.items()):
            answers = list(pool.map(_reaches, peers))
            lost = [
                f"{p.host} {p.address}: {why}" for p, (ok, why) in zip(peers, answers, strict=True) if not ok
            ]
            raw = f"{len(peers)} peers on {fabric}; unreachable: {', '.join(lost) or 'none'}"
            found.append(Measurement("fabric-unreachable", fabric, float(len(lost)), "peers", clipped(raw)))
    return found


def _reaches(peer: Peer) -> tuple[bool, str]:
    try:
        with socket.create_connection((peer.address, REACH_PORT), timeout=CONNECT_TIMEOUT_S):
            return True, "connected"
    except ConnectionRefusedError:
        return True, "refused (reached)"
    except OSError as exc:
        return False, exc.strerror or type(exc).__name__


def link_state(task: HostTask) -> list[Measurement]:
    """Per planned interface: 1 when it is up and running, 0 when it is down or has no carrier (the
    subject is its fabric, as for fabric-unreachable, so the policy can tell whose link failed)."""
    return [_link_up(link) for link in task.links]


def _link_up(link: Link) -> Measurement:
    request = link.interface.encode()[:15].ljust(40, b"\0")  # struct ifreq: the name, then a union
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            answer = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request)
    except OSError as exc:
        why = f"{link.interface}: {exc.strerror or type(exc).__name__}"
        return Measurement.failed("link-up", link.fabric, "bool", why)
    flags = int.from_bytes(answer[16:18], sys.byteorder)
    up, running = bool(flags & IFF_UP), bool(flags & IFF_RUNNING)
    raw = f"{link.interface}: flags 0x{flags:x} ({'UP' if up else 'DOWN'}{',RUNNING' if running else ''})"
    return Measurement("link-up", link.fabric, 1.0 if up and running else 0.0, "bool", raw)


def iperf_env() -> dict[str, str]:
    """iperf3 keeps its test buffer in a file under TMPDIR (default /tmp): in memory instead, so a
    host whose /tmp is full fails its disk check, not its peer's bandwidth measurement as well."""
    shm = Path("/dev/shm")
    return {**os.environ, "TMPDIR": str(shm)} if shm.is_dir() else dict(os.environ)


def start_bandwidth_server(task: HostTask) -> subprocess.Popen[str] | None:
    """Our iperf3 server for the one peer that measures towards us (started before our own checks)."""
    if not task.bandwidth_listen:
        return None
    argv = ["iperf3", "--server", "--one-off", "--json", "--bind", task.bandwidth_listen]
    argv += ["--port", str(task.iperf_port)]
    try:
        return subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, env=iperf_env()
        )
    except FileNotFoundError:
        return None


def stop_bandwidth_server(server: subprocess.Popen[str] | None, *, grace_s: float) -> None:
    """Wait for our peer's measurement to end (or `grace_s`), then stop the server."""
    if server is None:
        return
    try:
        server.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def tcp_bandwidth(task: HostTask) -> list[Measurement]:
    """Gbit/s sent to the peer's iperf3 server; retried while the peer's server is still starting."""
    peer = task.bandwidth_peer
    if peer is None:
        return []
    argv = ["iperf3", "--client", peer.address, "--port", str(task.iperf_port), "--json"]
    argv += ["--time", str(task.iperf_seconds), "--connect-timeout", "2000"]
    if task.bandwidth_listen:
        argv += ["--bind", task.bandwidth_listen]
    deadline = time.monotonic() + IPERF_CONNECT_DEADLINE_S
    while True:
        code, output = run_tool(argv, env=iperf_env())
        # iperf3 3.12 --json exits 0 even when it could not connect: read its words, and retry while
        # the peer's server is still starting (every host starts its server and measures at once).
        refused = "unable to connect" in output or "Connection refused" in output
        if code == 127 or not refused or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return [_iperf_measurement(peer.host, code, output)]


def _iperf_measurement(subject: str, code: int, output: str) -> Measurement:
    if code != 0:
        return Measurement.failed("tcp-bandwidth", subject, "Gbit/s", f"iperf3 exited {code}", output)
    try:
        result = json.loads(output)
        if result.get("error"):  # iperf3 reports a failed test in its JSON
            return Measurement.failed(
                "tcp-bandwidth", subject, "Gbit/s", f"iperf3: {result['error']}", output
            )
        bits = float(result["end"]["sum_received"]["bits_per_second"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return Measurement.failed(
            "tcp-bandwidth", subject, "Gbit/s", f"iperf3's JSON unreadable: {exc}", output
        )
    return Measurement("tcp-bandwidth", subject, round(bits / 1e9, 3), "Gbit/s", clipped(output))


def chrony_offset() -> Measurement | None:
    """chrony's own estimate of this host's offset (seconds), when chronyd answers; else None."""
    code, output = run_tool(["chronyc", "-n", "-c", "tracking"], timeout=10)
    if code != 0:
        return None
    fields = output.strip().split(",")
    try:
        # chronyc -c tracking: reference id, name, stratum, ref time, system time offset (s), ...
        offset = abs(float(fields[4]))
    except (IndexError, ValueError):
        return Measurement.failed("clock-offset", "chrony", "s", "chronyc's tracking line unreadable", output)
    return Measurement("clock-offset", "chrony", offset, "s", clipped(output))
