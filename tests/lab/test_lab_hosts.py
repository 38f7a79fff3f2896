"""Lab hosts on the shared session lab: identity, private state, air-gap, SSH and Ansible access."""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from waiting import wait_for

from aifactory.lab.access import LAB_HOST_VARS, SERVICE_COMMAND
from aifactory.lab.hosts import hardened_mounts

pytestmark = pytest.mark.lab
PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except OSError as exc:
    print(type(exc).__name__)
"""


def aifactory(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aifactory.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )


def test_each_host_reports_its_own_hostname(lab):
    for host in lab.hosts:
        assert lab.exec(["hostname"], host=host).stdout.strip() == host
        assert lab.exec(["cat", "/etc/hostname"], host=host).stdout.strip() == host
    assert socket.gethostname() not in lab.hosts


def test_ssh_from_the_control_host_reaches_each_host_with_host_key_checking(lab):
    ssh_config = lab.status.paths["ssh_config"]
    for host in lab.hosts:
        result = lab.exec(["ssh", "-F", ssh_config, "-o", "StrictHostKeyChecking=yes", host, "hostname"])
        assert result.stdout.strip() == host
    # a host key that does not match known_hosts is refused: present a wrong alias for one host
    first, second = lab.plan.hosts[1], lab.plan.hosts[2]
    refused = lab.exec(
        [
            "ssh",
            "-F",
            ssh_config,
            "-o",
            f"HostKeyAlias={first.name}",
            "-o",
            "ControlPath=none",
            second.management_address,
            "true",
        ],
        check=False,
    )
    assert refused.returncode != 0
    assert "host key" in refused.stderr.lower() or "verification failed" in refused.stderr.lower()


def test_ansible_ping_every_host_through_the_cli(lab):
    result = aifactory("lab", "exec", str(lab.spec), "--", "ansible", "all", "-m", "ansible.builtin.ping")
    assert result.returncode == 0, result.stdout + result.stderr
    for host in lab.hosts:
        assert f"{host} | SUCCESS" in result.stdout


def test_exec_passes_the_commands_exit_code_and_runs_where_asked(lab):
    result = aifactory("lab", "exec", lab.site, "--host", lab.hosts[2], "--", "sh", "-c", "hostname; exit 7")
    assert (result.returncode, result.stdout.strip()) == (7, lab.hosts[2])
    missing = aifactory("lab", "exec", lab.site, "--host", "no-such-host", "--", "true")
    assert missing.returncode == 2 and "no lab host" in missing.stderr


def test_files_under_opt_and_etc_stay_on_their_host(lab):
    writer, reader = lab.hosts[1], lab.hosts[2]
    token = uuid.uuid4().hex
    for folder in ("/opt", "/etc", "/var/lib", "/var/lib/aifactory", "/var/log", "/var/spool"):
        path = f"{folder}/aifactory-lab-test-{token}"
        lab.sh(f"echo {token} > {path}", host=writer)
        assert lab.exec(["cat", path], host=writer).stdout.strip() == token
        assert lab.exec(["test", "-e", path], host=reader, check=False).returncode == 1
        assert lab.exec(["test", "-e", path], host=lab.control_host, check=False).returncode == 1
        assert not Path(path).exists(), f"{path} leaked onto the machine"
    assert not Path("/var/lib/aifactory").exists() or Path("/var/lib/aifactory").is_dir()


def test_a_host_has_its_own_root_without_container_markers_and_shares_tmp(lab, tmp_path):
    """The host's root is its own (a whiteout hides the container marker the machine may carry, and
    a write outside its private trees stays on it) while /tmp stays the machine's."""
    host = lab.hosts[1]
    assert lab.exec(["test", "-e", "/.dockerenv"], host=host, check=False).returncode == 1
    assert lab.exec(["test", "-e", "/run/.containerenv"], host=host, check=False).returncode == 1
    root = lab.exec(["findmnt", "--noheadings", "--output", "FSTYPE", "/"], host=host).stdout.strip()
    assert root == "overlay"
    token = uuid.uuid4().hex
    own = f"/usr/local/share/aifactory-lab-test-{token}"
    lab.sh(f"echo {token} > {own}", host=host)
    assert lab.exec(["cat", own], host=host).stdout.strip() == token
    assert lab.exec(["test", "-e", own], host=lab.hosts[2], check=False).returncode == 1
    assert not Path(own).exists(), f"{own} leaked onto the machine"
    shared = tmp_path / f"from-host-{token}"
    lab.sh(f"echo {token} > {shared}", host=host)
    assert shared.read_text().strip() == token
    assert lab.exec(["cat", str(shared)], host=lab.hosts[2]).stdout.strip() == token


def test_a_host_has_the_hardened_mount_layout_in_proc_mounts_and_fstab(lab):
    """/boot, /home, /opt, /srv, /tmp, /usr, /var, /var/log, /var/tmp (and the storage mounts) are
    mounts of their own with the layout's options, as /etc/fstab declares; every other mount of a
    disk is nodev; and the kernel enforces noexec (a program copied to /tmp does not run there)."""
    host = lab.hosts[1]
    expected = hardened_mounts(lab.plan.host(host))
    assert {"/boot", "/home", "/tmp", "/usr", "/var", "/var/log", "/var/tmp"} <= set(expected)
    mounts = [line.split() for line in lab.exec(["cat", "/proc/mounts"], host=host).stdout.splitlines()]
    for path, options in expected.items():
        entries = [m for m in mounts if m[1] == path]
        assert entries, f"{path} is not a mount of its own"
        for entry in entries:  # a mount hidden under another one still shows, and is checked too
            assert set(options.split(",")) <= set(entry[3].split(",")), (path, entry[3])
    for device, path, _, options, *_ in mounts:
        if device.startswith("/dev/") and path != "/":
            assert "nodev" in options.split(","), (path, options)
    fstab = [
        line.split()
        for line in lab.exec(["cat", "/etc/fstab"], host=host).stdout.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {entry[1]: entry[3] for entry in fstab} == {p: f"bind,{o}" for p, o in expected.items()}
    copy = f"/tmp/aifactory-lab-noexec-{uuid.uuid4().hex}"
    lab.sh(f"cp /bin/true {copy}", host=host)
    try:
        assert lab.exec([copy], host=host, check=False).returncode != 0
        assert lab.exec(["/bin/true"], host=host).returncode == 0
    finally:
        Path(copy).unlink(missing_ok=True)
    # The lab's own tools (this Python environment, the checkout) run on a host wherever they lie on
    # the machine: under /tmp or /home, a noexec mount of the layout, they are an exception of their own.
    tool = Path(sys.prefix) / "bin" / "ansible-playbook"
    assert lab.exec([str(tool), "--version"], host=host).returncode == 0


def test_storage_mounts_are_shared_between_hosts_but_not_the_machine(lab):
    mount = lab.plan.host(lab.hosts[1]).mounts[0]
    token = uuid.uuid4().hex
    path = f"{mount.path}/lab-test-{token}"
    lab.sh(f"echo {token} > {path}", host=lab.hosts[1])
    assert lab.exec(["cat", path], host=lab.hosts[2]).stdout.strip() == token
    assert not Path(path).exists()


def test_hosts_have_only_lab_routes_and_no_default_route(lab):
    cidrs = [ipaddress.ip_network(f.cidr) for f in lab.plan.fabrics]
    for host in lab.hosts:
        for family in ("-4", "-6"):
            routes = lab.exec(["ip", "-j", family, "route", "show", "table", "all"], host=host).stdout
            for route in json.loads(routes or "[]"):
                if route.get("type") in ("local", "broadcast", "multicast", "anycast"):
                    continue
                destination = route["dst"]
                assert destination != "default", f"{host} has a default route: {route}"
                network = ipaddress.ip_network(destination, strict=False)
                allowed = (
                    network.is_link_local
                    or network.is_loopback
                    or network.is_multicast
                    or any(network.subnet_of(c) for c in cidrs if c.version == network.version)
                )
                assert allowed, f"{host} routes {destination}, outside the lab"


def test_the_machines_loopback_cannot_be_reached_from_a_lab_host(lab):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        host = lab.hosts[1]
        inside = lab.exec(["python3", "-c", PROBE, "127.0.0.1", str(port)], host=host).stdout.strip()
        assert inside == "ConnectionRefusedError"
        # the probe itself works: it reaches a lab address (another host's sshd)
        other = lab.plan.host(lab.hosts[2]).management_address
        assert lab.exec(["python3", "-c", PROBE, other, "22"], host=host).stdout.strip() == "connected"
    finally:
        listener.close()


def test_the_machine_namespace_gets_no_lab_address_or_bridge(lab):
    addresses = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    machine = {a["local"] for link in json.loads(addresses) for a in link.get("addr_info", [])}
    lab_addresses = {i.address for h in lab.plan.hosts for i in h.interfaces}
    assert not machine & lab_addresses
    links = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout
    machine_links = {link["ifname"] for link in json.loads(links)}
    assert not machine_links & set(lab.status.bridges.values())
    fabric_links = subprocess.run(
        ["ip", "-n", lab.status.fabric_netns, "-j", "link"], capture_output=True, text=True, check=True
    ).stdout
    assert set(lab.status.bridges.values()) <= {link["ifname"] for link in json.loads(fabric_links)}


def test_interfaces_are_named_as_the_plan_names_them(lab):
    for host in lab.plan.hosts:
        links = json.loads(lab.exec(["ip", "-j", "addr"], host=host.name).stdout)
        found = {(link["ifname"], a["local"]) for link in links for a in link.get("addr_info", [])}
        for interface in host.interfaces:
            assert (interface.name, interface.address) in found


def test_status_json_names_the_generated_access_files(lab):
    result = aifactory("lab", "status", lab.site, "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["state"] == "up"
    for key in ("inventory", "ssh_config", "known_hosts", "ansible_cfg", "private_key"):
        assert Path(data[key]).is_file(), key
    assert stat.S_IMODE(os.stat(data["private_key"]).st_mode) == 0o600
    assert [h["name"] for h in data["hosts"]] == lab.hosts
    for host in data["hosts"]:
        assert host["sshd"]["state"] == "listening"
        planned = lab.plan.host(host["name"])
        assert host["management_address"] == planned.management_address
        if planned.bmc:
            assert host["bmc"]["address"] == planned.bmc.address and host["bmc"]["state"] == "running"


def test_inventory_marks_lab_hosts_and_the_service_manager(lab):
    import yaml

    inventory = yaml.safe_load(Path(lab.status.paths["inventory"]).read_text())["all"]
    assert {k: inventory["vars"].get(k) for k in LAB_HOST_VARS} == LAB_HOST_VARS
    assert inventory["vars"]["aifactory_service_manager"] == "supervised"
    assert {h: v["ansible_host"] for h, v in inventory["hosts"].items()} == {
        h.name: h.management_address for h in lab.plan.hosts
    }


def test_lab_up_again_changes_nothing(lab):
    from aifactory.lab import lab_status, lab_up

    # Compared with the lab as it is now: another test may have restarted a host's sshd (restart_sshd).
    before = lab_status(lab.site)
    again = lab_up(lab.planned)
    assert [h.anchor.pid for h in again.hosts] == [h.anchor.pid for h in lab.status.hosts]
    assert [h.sshd.pid for h in again.hosts] == [h.sshd.pid for h in before.hosts]


def test_bmc_passwords_appear_in_no_lab_file(lab):
    passwords = [lab.bmc_credential(h.name).password for h in lab.plan.hosts if h.bmc]
    assert passwords
    for path in Path(lab.status.root).rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 5_000_000:
            data = path.read_bytes()
            for password in passwords:
                assert password.encode() not in data, f"a BMC password is in {path}"
    status = aifactory("lab", "status", lab.site, "--format", "json").stdout
    assert not any(p in status for p in passwords)


def test_supervised_service_starts_restarts_and_stops(lab):
    host = lab.hosts[1]
    address = lab.plan.host(host).management_address
    tool = SERVICE_COMMAND
    unit = (
        f"[Unit]\nDescription=lab test\n[Service]\nEnvironment=PORT=18123\n"
        f"ExecStart=/usr/bin/python3 -m http.server $PORT --bind {address}\n"
        "Restart=always\nRestartSec=0.2\n"
    )
    lab.sh(
        "mkdir -p /etc/systemd/system && cat > /etc/systemd/system/labtest-web.service",
        host=host,
        input_text=unit,
    )
    started = json.loads(lab.exec([tool, "start", "labtest-web"], host=host).stdout)
    assert started["state"] == "running" and started["changed"] is True
    again = json.loads(lab.exec([tool, "start", "labtest-web"], host=host).stdout)
    assert again["changed"] is False and again["pid"] == started["pid"]
    assert lab.exec(["python3", "-c", PROBE, address, "18123"]).stdout.strip() == "connected"
    lab.exec(["kill", str(started["pid"])], host=host)

    def restarted_with_a_new_pid() -> dict | None:
        shown = json.loads(lab.exec([tool, "status", "labtest-web"], host=host, check=False).stdout or "{}")
        return shown if shown.get("state") == "running" and shown.get("pid") != started["pid"] else None

    restarted = wait_for(
        restarted_with_a_new_pid, what="the supervisor to restart the killed service", timeout=10
    )
    assert restarted["state"] == "running" and restarted["pid"] != started["pid"]
    stopped = json.loads(lab.exec([tool, "stop", "labtest-web"], host=host).stdout)
    assert stopped["state"] == "stopped" and stopped["changed"] is True
    assert lab.exec([tool, "status", "labtest-web"], host=host, check=False).returncode == 3
    assert (
        lab.exec(
            ["test", "-e", "/etc/systemd/system/labtest-web.service"], host=lab.hosts[2], check=False
        ).returncode
        == 1
    )


def test_a_supervised_oneshot_that_remains_after_exit_runs_once_until_restarted(lab):
    """As `systemctl start` of an active unit: the roles call `start` alone, trusting it to leave a
    oneshot with RemainAfterExit=yes that has run as it is (changed false, not run again)."""
    host = lab.hosts[1]
    name = f"labtest-once-{uuid.uuid4().hex[:8]}"
    stamps = f"/var/tmp/{name}.stamps"
    unit = f"[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh -c 'echo run >> {stamps}'\n"
    lab.sh(
        f"mkdir -p /etc/systemd/system && cat > /etc/systemd/system/{name}.service",
        host=host,
        input_text=unit,
    )
    started = json.loads(lab.exec([SERVICE_COMMAND, "start", name], host=host).stdout)
    assert started["state"] == "exited" and started["changed"] is True
    again = json.loads(lab.exec([SERVICE_COMMAND, "start", name], host=host).stdout)
    assert again["state"] == "exited" and again["changed"] is False
    assert lab.exec(["cat", stamps], host=host).stdout.split() == ["run"]
    restarted = json.loads(lab.exec([SERVICE_COMMAND, "restart", name], host=host).stdout)
    assert restarted["changed"] is True
    assert lab.exec(["cat", stamps], host=host).stdout.split() == ["run", "run"]
    stopped = json.loads(lab.exec([SERVICE_COMMAND, "stop", name], host=host).stdout)
    assert stopped["state"] == "stopped"
    rerun = json.loads(lab.exec([SERVICE_COMMAND, "start", name], host=host).stdout)
    assert rerun["changed"] is True and lab.exec(["cat", stamps], host=host).stdout.split() == ["run"] * 3


def _wait_for_lines(lab, host: str, path: str, count: int, *, timeout: float) -> list[float]:  # noqa: ANN001
    """The timestamps a timer's service appended to `path`, once there are `count` of them."""

    def stamps() -> list[float]:
        return [float(stamp) for stamp in lab.exec(["cat", path], host=host, check=False).stdout.split()]

    return wait_for(
        lambda: found if len(found := stamps()) >= count else None,
        what=f"{count} runs of the timer's service",
        timeout=timeout,
        every=0.2,
        detail=lambda: f"saw {len(stamps())}",
    )


def test_supervised_timer_starts_its_service_on_schedule_and_stops(lab):
    """Roles install timers the same way on the lab as on systemd hosts (OnActiveSec=, OnUnitActiveSec=)."""
    host = lab.hosts[1]
    tool = SERVICE_COMMAND
    name = f"labtest-tick-{uuid.uuid4().hex[:8]}"
    stamps = f"/var/tmp/{name}.stamps"
    service = (
        "[Unit]\nDescription=lab timer test\n[Service]\nType=oneshot\n"
        f"ExecStart=/bin/sh -c 'date +%%s.%%N >> {stamps}'\n"
    )
    timer = f"[Unit]\nDescription=tick\n[Timer]\nOnActiveSec=0.5\nOnUnitActiveSec=1s\nUnit={name}.service\n"
    lab.sh(
        f"mkdir -p /etc/systemd/system && cat > /etc/systemd/system/{name}.service",
        host=host,
        input_text=service,
    )
    lab.sh(f"cat > /etc/systemd/system/{name}.timer", host=host, input_text=timer)
    started = json.loads(lab.exec([tool, "start", f"{name}.timer"], host=host).stdout)
    assert started["state"] == "waiting" and started["changed"] is True
    again = json.loads(lab.exec([tool, "start", f"{name}.timer"], host=host).stdout)
    assert again["changed"] is False and again["pid"] == started["pid"]
    runs = _wait_for_lines(lab, host, stamps, 4, timeout=60)
    gaps = [later - earlier for earlier, later in itertools.pairwise(runs)]
    assert all(gap >= 0.95 for gap in gaps), gaps  # never before its interval
    status = lab.exec([tool, "status", f"{name}.timer"], host=host)
    shown = json.loads(status.stdout)
    assert shown["state"] == "waiting" and shown["next_trigger"] > shown["last_trigger"]
    stopped = json.loads(lab.exec([tool, "stop", f"{name}.timer"], host=host).stdout)
    assert stopped["state"] == "stopped" and stopped["changed"] is True
    assert lab.exec([tool, "status", f"{name}.timer"], host=host, check=False).returncode == 3
    count = len(lab.exec(["cat", stamps], host=host).stdout.split())
    time.sleep(2.5)
    assert len(lab.exec(["cat", stamps], host=host).stdout.split()) == count, "a stopped timer fired"


def test_a_timer_the_lab_cannot_honour_is_refused_not_ignored(lab):
    host = lab.hosts[1]
    name = f"labtest-bad-{uuid.uuid4().hex[:8]}"
    lab.sh(
        f"mkdir -p /etc/systemd/system && cat > /etc/systemd/system/{name}.service",
        host=host,
        input_text="[Service]\nType=oneshot\nExecStart=/bin/true\n",
    )
    for body, reason in (
        ("OnCalendar=every full moon\n", "cannot read"),
        ("OnActiveSec=1s\nOnClockChange=yes\n", "does not honour OnClockChange"),
        ("Persistent=true\n", "has no trigger"),
    ):
        lab.sh(f"cat > /etc/systemd/system/{name}.timer", host=host, input_text=f"[Timer]\n{body}")
        refused = lab.exec([SERVICE_COMMAND, "start", f"{name}.timer"], host=host, check=False)
        assert refused.returncode == 1, refused.stdout
        assert reason in json.loads(refused.stdout)["error"]
