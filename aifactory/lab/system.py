"""Thin, checked wrappers around the machine: commands, namespaces, processes, prerequisites."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from aifactory.errors import LabError, PrerequisiteError

log = logging.getLogger(__name__)
NETNS_DIR = Path("/run/netns")

# Tool -> the Debian package that provides it.
REQUIRED_TOOLS = {
    "ip": "iproute2",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "mount": "mount",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}
SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def which(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    for folder in SBIN:
        candidate = Path(folder) / tool
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def check_prerequisites() -> dict[str, str]:
    """Root, namespaces and the tools the lab drives; one clear error listing everything missing."""
    if os.geteuid() != 0:
        raise PrerequisiteError(
            "the lab needs root (it creates network and mount namespaces)",
            hint="run it as root, e.g. with sudo",
        )
    if not Path("/proc/self/ns/net").exists() or not Path("/proc/self/ns/mnt").exists():
        raise PrerequisiteError("this kernel has no network or mount namespaces")
    tools: dict[str, str] = {}
    missing: dict[str, str] = {}
    for tool, package in REQUIRED_TOOLS.items():
        path = which(tool)
        if path is None:
            missing[tool] = package
        else:
            tools[tool] = path
    if missing:
        packages = " ".join(sorted(set(missing.values())))
        raise PrerequisiteError(
            f"the lab needs {', '.join(sorted(missing))}, which this machine lacks",
            hint=f"install them: apt-get install -y {packages}",
        )
    return tools


def run(
    argv: Sequence[str], *, check: bool = True, input_text: str | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output, raise LabError (with its stderr) when it fails."""
    log.debug("run %s", " ".join(argv))
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, input=input_text, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise PrerequisiteError(f"cannot run {argv[0]}: not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`{' '.join(argv)}` did not finish in {timeout:.0f} s") from exc
    if check and result.returncode != 0:
        raise LabError(
            f"`{' '.join(argv)}` failed (exit {result.returncode}): {result.stderr.strip()[-800:]}",
        )
    return result


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip"] + (["-n", netns] if netns else []) + list(args)
    return run(argv, check=check)


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def list_netns(prefix: str) -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def netns_inode(name: str) -> int | None:
    """The namespace's inode, or None when the name is not (or no longer) a mounted namespace."""
    try:
        info = os.stat(NETNS_DIR / name)
        nsfs = os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return None
    return info.st_ino if info.st_dev == nsfs else None


def namespace_inode(pid: int, kind: str) -> int | None:
    """The inode of a process's namespace of one kind (net, mnt, uts), or None if it is gone."""
    try:
        link = os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None
    return int(link[link.index("[") + 1 : -1])


def pids_in_netns(inodes: Iterable[int]) -> list[int]:
    """Every process whose network namespace is one of `inodes`."""
    wanted = set(inodes)
    if not wanted:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and namespace_inode(int(entry.name), "net") in wanted:
            found.append(int(entry.name))
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def terminate(pids: Iterable[int], *, grace: float = 3.0) -> list[int]:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL what is left; returns the pids it signalled."""
    targets = [p for p in set(pids) if p != os.getpid() and alive(p)]
    for pid in targets:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in targets):
        time.sleep(0.05)
    for pid in targets:
        if alive(pid):
            _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0  # SIGKILL cannot be refused; a loaded machine may be slow to reap
    while time.monotonic() < deadline and any(alive(p) for p in targets):
        time.sleep(0.05)
    _reap(targets)
    return sorted(targets)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pids: Iterable[int]) -> None:
    """Collect our own exited children so they do not linger as zombies."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def listening(pid: int, address: str, port: int) -> bool:
    """Does the network namespace of `pid` have a TCP socket listening on address:port?"""
    for table, width in (("tcp", 8), ("tcp6", 32)):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state = fields[1], fields[3]
            if state != "0A":  # LISTEN
                continue
            host_hex, port_hex = local.split(":")
            same_family = len(host_hex) == width
            if int(port_hex, 16) == port and same_family and _hex_address(host_hex) in (address, None):
                return True
    return False


def _hex_address(host_hex: str) -> str | None:
    """/proc/net/tcp's little-endian hex address; None for the wildcard."""
    import ipaddress

    raw = bytes.fromhex(host_hex)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    value = ipaddress.ip_address(words)
    return None if value.is_unspecified else str(value)


def wait_ready(
    processes: Mapping[str, subprocess.Popen[bytes]],
    ready: Callable[[str, int], bool],
    *,
    what: str,
    log_of: Callable[[str], Path],
    timeout: float,
    interval: float = 0.02,
) -> None:
    """Wait until `ready(name, pid)` holds for every process; a process that exits first, or a
    deadline passed, raises LabError with the tail of that process's log."""
    deadline = time.monotonic() + timeout
    pending = dict(processes)
    while pending:
        for name, proc in list(pending.items()):
            if ready(name, proc.pid):
                del pending[name]
            elif proc.poll() is not None:
                text = log_of(name).read_text(errors="replace").strip() if log_of(name).exists() else ""
                raise LabError(f"{what} of {name} exited (code {proc.returncode}): {text[-600:]}")
        if pending and time.monotonic() > deadline:
            raise LabError(f"{what} of {', '.join(sorted(pending))} not ready within {timeout:.0f} s")
        if pending:
            time.sleep(interval)
