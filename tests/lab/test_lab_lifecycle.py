"""lab up/down leave nothing behind, even after an `up` killed halfway; the machine's /etc and global
sysctls are unchanged by a full lab session; a second lab (same addresses) runs beside the shared one."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from waiting import wait_for

from tests.conftest import copy_lab_spec

pytestmark = [pytest.mark.lab, pytest.mark.slow]
VOLATILE = {
    "ns_last_pid",
    "uuid",
    "entropy_avail",
    "dentry-state",
    "file-nr",
    "inode-nr",
    "inode-state",
    "nr",
    "aio-nr",
    "boot_id",
}
SYSCTL_TREES = ("kernel", "vm", "fs", "net/core", "net/ipv4", "net/ipv6/conf/all", "net/ipv6/conf/default")


def etc_snapshot() -> dict[str, tuple[object, ...]]:
    """Every entry under the machine's /etc: type, mode, owner, size, content digest or link target."""
    found: dict[str, tuple[object, ...]] = {}
    for root, dirs, files in os.walk("/etc"):
        for name in dirs + files:
            path = os.path.join(root, name)
            info = os.lstat(path)
            if os.path.islink(path):
                found[path] = ("link", os.readlink(path))
            elif os.path.isfile(path):
                small = info.st_size < 10_000_000
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if small else ""
                found[path] = ("file", info.st_mode, info.st_uid, info.st_size, digest)
            else:
                found[path] = ("dir", info.st_mode, info.st_uid)
    return found


def sysctl_snapshot() -> dict[str, str]:
    values = {}
    for tree in SYSCTL_TREES:
        for root, _, files in os.walk(f"/proc/sys/{tree}"):
            for name in files:
                if name in VOLATILE or root.endswith("/fs/quota"):  # counters, not settings
                    continue
                try:
                    values[os.path.join(root, name)] = Path(root, name).read_text()
                except OSError:
                    continue
    return values


def lab_namespaces(site: str) -> list[str]:
    from aifactory.lab.names import site_prefix
    from aifactory.lab.system import list_netns

    return list_netns(site_prefix(site))


def alive(pid: int) -> bool:
    from aifactory.lab.system import alive as process_alive

    return process_alive(pid)


def journal_pids(root: Path) -> list[int]:
    try:
        lines = (root / "journal.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line)["pid"] for line in lines if '"process"' in line]


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def mounts_mentioning(text: str, pid: str = "self") -> list[str]:
    return [line for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines() if text in line]


def assert_nothing_left(site: str, lab_root: Path, pids: list[int]) -> None:
    assert lab_namespaces(site) == [], "namespaces left"
    left = {p: cmdline(p) for p in pids if alive(p)}
    assert left == {}, "processes left"
    assert mounts_mentioning(str(lab_root)) == [], "mounts left"
    assert not lab_root.exists(), "lab files left"


def test_down_after_an_up_killed_halfway_leaves_nothing(tmp_path, lab):
    from aifactory.lab import lab_down, lab_status

    site = f"lk{os.getpid()}"
    spec = copy_lab_spec(tmp_path / "spec", site)
    lab_root = Path(os.environ["AIFACTORY_STATE_HOME"]) / site / "lab"
    up = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from aifactory.lab import lab_up; "
            "from aifactory.plan import plan_site; lab_up(plan_site(sys.argv[1]))",
            str(spec),
        ],
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: len(journal_pids(lab_root)) >= 3 or up.poll() is not None,
            what="lab up to start 3 processes (to kill it halfway)",
            timeout=60,
            every=0.02,
        )
        up.send_signal(signal.SIGKILL)
        output = up.communicate()[0].decode(errors="replace")
        pids = journal_pids(lab_root)
        assert len(pids) >= 3, f"up was not caught halfway (exit {up.returncode}): {output[-2000:]}"
        assert lab_namespaces(site), "the killed up left no namespace: nothing was tested"
        assert any(alive(p) for p in pids)
        assert lab_status(site).state == "partial"

        lab_down(site)
        assert_nothing_left(site, lab_root, pids)
        lab_down(site)  # idempotent
        assert lab_status(site).state == "down"
    finally:
        lab_down(site, force=True)


def test_full_lab_session_beside_the_shared_lab_leaves_machine_unchanged(tmp_path, lab, monkeypatch):
    from aifactory.lab import lab_bmc_credential, lab_down, lab_exec, lab_status, lab_up
    from aifactory.plan import plan_site
    from aifactory.secrets import SecretStore
    from aifactory.state import SiteState

    etc_before, sysctl_before = etc_snapshot(), sysctl_snapshot()
    site = f"lf{os.getpid()}"
    planned = plan_site(copy_lab_spec(tmp_path / "spec", site))
    # the site already has a secret store, under the admin's own passphrase
    passphrase = tmp_path / "admin-passphrase"
    passphrase.write_text("an admin's passphrase\n")
    store_path = SiteState.for_site(site).path("secrets.enc")
    SecretStore(store_path, passphrase.read_bytes().strip()).set("secret://admin/own", "kept")
    monkeypatch.setenv("AIFACTORY_PASSPHRASE_FILE", str(passphrase))
    status = lab_up(planned)
    assert status.secrets == {"store": str(store_path), "passphrase_file": str(passphrase)}
    bmc_host = next(h for h in planned.plan.hosts if h.bmc)
    assert lab_bmc_credential(site, bmc_host.bmc.credentials).username == "admin"
    lab_root = Path(status.root)
    try:
        pids = [
            p
            for h in status.hosts
            for p in (h.anchor.pid, h.sshd.pid, h.bmc.process.pid if h.bmc else 0)
            if p
        ]
        # everything exists: namespaces, bridges in the fabric namespace, processes, private mounts
        assert len(lab_namespaces(site)) == len(planned.plan.hosts) + 2
        links = subprocess.run(
            ["ip", "-n", status.fabric_netns, "-j", "link"], capture_output=True, text=True, check=True
        ).stdout
        assert set(status.bridges.values()) <= {link["ifname"] for link in json.loads(links)}
        assert all(alive(p) for p in pids)
        anchor = str(status.hosts[0].anchor.pid)
        assert mounts_mentioning(str(lab_root), anchor), "the host has no private mounts"
        # same addresses as the shared lab, both answer, each with its own hosts
        for running, control in ((site, status.control_host), (lab.site, lab.control_host)):
            ssh_config = lab_status(running).paths["ssh_config"]
            target = planned.plan.hosts[1].name.replace(site, running)
            result = lab_exec(running, ["ssh", "-F", ssh_config, target, "hostname"])
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip().startswith(running)
            assert control.startswith(running)
        # roles' writes inside hosts: /etc files and a per-namespace sysctl
        host = planned.plan.hosts[1].name
        write = lab_exec(
            site,
            [
                "sh",
                "-c",
                "echo x > /etc/aifactory-lab-probe && mkdir -p /etc/sysctl.d && "
                "echo net.ipv4.ip_forward=1 > /etc/sysctl.d/99-lab.conf && "
                "sysctl -q -w net.ipv4.ip_forward=1",
            ],
            host=host,
        )
        assert write.returncode == 0, write.stderr
    finally:
        lab_down(site)
    assert_nothing_left(site, lab_root, pids)
    assert SecretStore(store_path, passphrase.read_bytes().strip()).references() == ["secret://admin/own"]
    assert sysctl_snapshot() == sysctl_before
    after = etc_snapshot()
    assert {k for k in after.keys() ^ etc_before.keys()} == set()
    assert {k for k in after if after[k] != etc_before[k]} == set()
