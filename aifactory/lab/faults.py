"""Real faults on a lab host, each undone after: the corpus the continuous health checks are proven
on (docs/health.md, "The fault corpus"; tests/health/test_faults_lab.py, benchmarks/health_bench.py).

Every fault is made with the stock tool a real fault would show through, inside one lab host's own
namespaces (`lab_exec`), so nothing outside that host changes: the machine's clock, disk, links and
services are never touched.

| fault | how | what shows it |
|---|---|---|
| `link-rate` | `tc qdisc ... tbf rate 20mbit` on the compute link | tcp-bandwidth |
| `link-loss` | nftables `numgen random` drop of the link's outgoing full-size frames | tcp-bandwidth |
| `link-down` | `ip link set dev IF down` on the compute link | link-up |
| `disk-full` | a small tmpfs mounted over the host's /tmp, filled | disk-free |
| `storage-unmounted` | `umount` of a site storage mount | storage-mounted-rw |
| `storage-read-only` | the storage mount remounted read-only | storage-mounted-rw |
| `munge-stopped`, `slurmd-stopped`, `runtime-stopped` | stopped by the lab's supervisor | service-running |
| `clock-wrong` | chronyd following an NTP source 120 s ahead (faketime) | clock-offset |

netem is not in the lab's kernel, hence nftables for the loss.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aifactory.errors import LabError
from aifactory.health.slurm import REASON_PREFIX, NodeState, drained_for, parse_show_node
from aifactory.lab.access import SERVICE_COMMAND
from aifactory.lab.execute import lab_exec
from aifactory.lab.layout import LabLayout
from aifactory.plan.model import Host, SitePlan

FAULT_TIMEOUT_S = 60.0
NFT_TABLE = "aifactory_fault"
TMPFS_SOURCE = "aifactory-fault"  # the disk-full fault's file system, by name in the mount table
TMPFS_SIZE = "4m"
LOSS_PERCENT = 40
# A link with bit errors loses a frame with a probability that grows with its length: most of the
# full-size data frames, few of the small ones (ACKs, SYNs). Dropping only the large ones is that
# fault, and keeps it the host's own: dropping its ACKs too would slow its peers' transfers towards
# it, which is the same picture as their own links being slow.
LOSSY_FRAME_BYTES = 1000
POLL_S = 1.0
CLOCK_SHIFT_S = 120


@dataclass(frozen=True)
class Fault:
    """One fault on one host: shell lines run in the host's namespaces to make and to undo it, and
    the health reason codes that name it (a drain for any of them is the right diagnosis)."""

    name: str
    host: str
    description: str
    reasons: frozenset[str]
    inject: str
    undo: str
    # Made first on another host and undone last (the clock fault's NTP source on the control host).
    source_host: str = ""
    source_inject: str = ""
    source_undo: str = ""


def fault_corpus(plan: SitePlan, host: Host, layout: LabLayout) -> list[Fault]:
    """Every fault the lab can make on `host` (a compute host with a compute link and storage)."""
    q = shlex.quote
    link = _compute_interface(plan, host)
    faults = [
        Fault(
            "link-rate",
            host.name,
            f"compute link {link} limited to 20 Mbit/s (tc tbf)",
            frozenset({"tcp-bandwidth"}),
            f"tc qdisc replace dev {q(link)} root tbf rate 20mbit burst 32kbit latency 400ms",
            f"tc qdisc del dev {q(link)} root 2>/dev/null || true",
        ),
        Fault(
            "link-loss",
            host.name,
            f"{LOSS_PERCENT}% of the full-size frames leaving by {link} dropped (nftables numgen random)",
            frozenset({"tcp-bandwidth"}),
            "\n".join(
                [
                    f"nft add table inet {NFT_TABLE}",
                    f"nft add chain inet {NFT_TABLE} egress "
                    + q("{ type filter hook output priority 0; policy accept; }"),
                    f"nft add rule inet {NFT_TABLE} egress oifname {q(link)} "
                    f"meta length gt {LOSSY_FRAME_BYTES} numgen random mod 100 lt {LOSS_PERCENT} drop",
                ]
            ),
            f"nft delete table inet {NFT_TABLE} 2>/dev/null || true",
        ),
        Fault(
            "link-down",
            host.name,
            f"compute link {link} down",
            frozenset({"link-up"}),
            f"ip link set dev {q(link)} down",
            f"ip link set dev {q(link)} up",
        ),
        Fault(
            "disk-full",
            host.name,
            f"/tmp full (a {TMPFS_SIZE} file system of its own, filled)",
            frozenset({"disk-free"}),
            f"mount -t tmpfs -o size={TMPFS_SIZE},nodev,nosuid,noexec {TMPFS_SOURCE} /tmp\n"
            "head -c 64m /dev/zero > /tmp/aifactory-fault-fill 2>/dev/null || true",  # to ENOSPC
            f"while grep -q ' /tmp .* - tmpfs {TMPFS_SOURCE} ' /proc/self/mountinfo; do umount -l /tmp; done",
        ),
    ]
    faults += _storage_faults(host, layout)
    if plan.control_host is not None and plan.control_host != host.name:
        faults.append(_clock_fault(plan, host))
    for service in ("munge", "slurmd", "aifactory-serve"):
        label = "runtime" if service == "aifactory-serve" else service
        faults.append(
            Fault(
                f"{label}-stopped",
                host.name,
                f"{service} stopped",
                frozenset({"service-running"}),
                f"{SERVICE_COMMAND} stop {q(service)} >/dev/null",
                f"{SERVICE_COMMAND} start {q(service)} >/dev/null",
            )
        )
    return faults


def _clock_fault(plan: SitePlan, host: Host) -> Fault:
    """An NTP source on the control host serving a time CLOCK_SHIFT_S ahead (chronyd under
    libfaketime), and chronyd on the host following it without touching any clock (`-x`: the lab's
    hosts share the machine's kernel clock, which never changes). The host's chrony then reports an
    offset of the shift, as a host following a wrong time source would."""
    q = shlex.quote
    control = next(h for h in plan.hosts if h.name == plan.control_host)
    folder = "/run/aifactory-fault"
    server_conf = "\n".join(
        [
            f"pidfile {folder}/chronyd-server.pid",
            f"bindcmdaddress {folder}/chronyd-server.sock",  # not the host's own chronyc socket
            "cmdport 0",
            "local stratum 1",
            f"allow {control.management_address}/24",
        ]
    )
    client_conf = "\n".join(
        [f"pidfile {folder}/chronyd.pid", f"server {control.management_address} iburst minpoll -4 maxpoll -4"]
    )
    stop = "if [ -f {pid} ]; then kill $(cat {pid}) 2>/dev/null || true; rm -f {pid}; fi"
    return Fault(
        "clock-wrong",
        host.name,
        f"the host's time source {CLOCK_SHIFT_S} s ahead (chronyd under faketime on {control.name})",
        frozenset({"clock-offset"}),
        f"mkdir -p {folder} /run/chrony\nprintf '%s\\n' {q(client_conf)} > {folder}/client.conf\n"
        f"chronyd -x -u root -f {folder}/client.conf",
        stop.format(pid=f"{folder}/chronyd.pid"),
        source_host=control.name,
        source_inject=f"mkdir -p {folder}\nprintf '%s\\n' {q(server_conf)} > {folder}/server.conf\n"
        f"faketime -f +{CLOCK_SHIFT_S} chronyd -x -u root -f {folder}/server.conf",
        source_undo=stop.format(pid=f"{folder}/chronyd-server.pid"),
    )


def _storage_faults(host: Host, layout: LabLayout) -> list[Fault]:
    """The host's first site storage mount unmounted, or read-only (none without a mount)."""
    if not host.mounts:
        return []
    q = shlex.quote
    mount = host.mounts[0]
    source = layout.storage_dir(mount.storage)
    return [
        Fault(
            "storage-unmounted",
            host.name,
            f"site storage {mount.path} unmounted",
            frozenset({"storage-mounted-rw"}),
            f"umount -l {q(mount.path)}",  # lazily: the runtime may hold a file there open
            f"mountpoint -q {q(mount.path)} || mount --bind {q(str(source))} {q(mount.path)}",
        ),
        Fault(
            "storage-read-only",
            host.name,
            f"site storage {mount.path} read-only",
            frozenset({"storage-mounted-rw"}),
            f"mount -o remount,bind,ro {q(mount.path)}",
            f"mount -o remount,bind,rw {q(mount.path)}",
        ),
    ]


def storage_gone_everywhere(plan: SitePlan, layout: LabLayout) -> list[Fault]:
    """The site storage unmounted from every host that mounts it at once: the fault every host
    shares, which the drain budget exists for (the control host's too, which has no compute link)."""
    return [f for host in plan.hosts for f in _storage_faults(host, layout) if f.name == "storage-unmounted"]


def _compute_interface(plan: SitePlan, host: Host) -> str:
    compute = {f.name for f in plan.fabrics if f.purpose == "compute"}
    for interface in host.interfaces:
        if interface.fabric in compute and interface.rail == 0:
            return interface.name
    raise LabError(f"{host.name} has no compute link to fault", code="lab-fault")


def inject(site: str, fault: Fault) -> None:
    if fault.source_host:
        _run(site, fault.source_host, fault.source_inject, f"make the source of the fault {fault.name}")
    _run(site, fault.host, fault.inject, f"make the fault {fault.name}")


def undo(site: str, fault: Fault) -> None:
    _run(site, fault.host, fault.undo, f"undo the fault {fault.name}")
    if fault.source_host:
        _run(site, fault.source_host, fault.source_undo, f"undo the source of the fault {fault.name}")


def _run(site: str, host: str, script: str, what: str) -> None:
    done = _sh(site, host, f"set -e\n{script}")
    if done.returncode != 0:
        raise LabError(
            f"could not {what} on {host}: {(done.stderr or done.stdout).strip()[-400:]}",
            code="lab-fault",
        )


def _sh(site: str, host: str, script: str) -> subprocess.CompletedProcess[str]:
    return lab_exec(site, ["sh", "-c", script], host, timeout=FAULT_TIMEOUT_S)


def undo_all(site: str, faults: Sequence[Fault]) -> list[str]:
    """Undo every fault (each undo is safe to run when its fault is not there); what failed."""
    failed = []
    for fault in faults:
        steps = [(fault.host, fault.undo)] + (
            [(fault.source_host, fault.source_undo)] if fault.source_host else []
        )
        for host, script in steps:
            done = _sh(site, host, script)
            if done.returncode != 0:
                failed.append(f"{host} {fault.name}: {(done.stderr or done.stdout).strip()[-200:]}")
    return failed


@dataclass(frozen=True)
class Observation:
    """What Slurm showed while one fault stood: when its host was drained and why, any other node
    drained meanwhile (a false drain), and how long the host took to come back once it was undone."""

    fault: Fault
    drained_after_s: float | None  # None: not drained with one of the fault's reasons in time
    reason: str
    others_drained: tuple[str, ...]
    back_after_s: float | None  # None: still drained when the wait ended

    @property
    def right(self) -> bool:
        return self.drained_after_s is not None and not self.others_drained


def slurm_nodes(site: str) -> dict[str, NodeState]:
    """Slurm's view of every node, read on the control host."""
    done = lab_exec(site, ["scontrol", "--oneliner", "show", "node"], timeout=FAULT_TIMEOUT_S)
    if done.returncode != 0:
        raise LabError(f"scontrol show node failed: {done.stderr.strip()[-300:]}", code="lab-fault")
    return parse_show_node(done.stdout)


def all_in_service(site: str, nodes: Sequence[str]) -> bool:
    """Whether no node is drained (by aifactory or anyone): where each fault must start from."""
    states = slurm_nodes(site)
    return all(not (states[n].drained if n in states else False) for n in nodes)


def observe(
    site: str, fault: Fault, nodes: Sequence[str], *, drain_within_s: float, back_within_s: float
) -> Observation:
    """Make the fault, watch Slurm until its host is drained for one of its reasons (or the time is
    up), undo it, and watch until the host is back in service."""
    others: set[str] = set()
    drained_after, reason = None, ""
    inject(site, fault)
    started = time.monotonic()
    try:
        while time.monotonic() - started < drain_within_s:
            states = slurm_nodes(site)
            others |= {n for n in nodes if n != fault.host and _held(states.get(n))}
            state = states.get(fault.host)
            if _held(state) and state is not None and fault.reasons & set(drained_for(state.reason)):
                drained_after, reason = time.monotonic() - started, state.reason
                break
            time.sleep(POLL_S)
    finally:
        undo(site, fault)
    undone = time.monotonic()
    back_after = None
    while time.monotonic() - undone < back_within_s:
        states = slurm_nodes(site)
        others |= {n for n in nodes if n != fault.host and _held(states.get(n))}
        if not _held(states.get(fault.host)):
            back_after = time.monotonic() - undone
            break
        time.sleep(POLL_S)
    return Observation(fault, drained_after, reason, tuple(sorted(others)), back_after)


def _held(state: NodeState | None) -> bool:
    return state is not None and state.drained_by_us


def table(observations: Sequence[Observation]) -> str:
    """fault / host / reason / seconds to drain / others drained / seconds back, one row each."""
    rows = [("FAULT", "HOST", "DRAINED FOR", "TO DRAIN", "OTHERS DRAINED", "BACK AFTER UNDO")]
    for o in observations:
        rows.append(
            (
                o.fault.name,
                o.fault.host,
                o.reason.removeprefix(REASON_PREFIX).strip() or "NOT DRAINED",
                f"{o.drained_after_s:.1f} s" if o.drained_after_s is not None else "-",
                ",".join(o.others_drained) or "none",
                f"{o.back_after_s:.1f} s" if o.back_after_s is not None else "NOT BACK",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def start_control_checks(spec: str, every: float, log: Path) -> subprocess.Popen[bytes]:
    """The control host's continuous checks as a site runs them (`aifactory health SPEC --every`),
    from this Python, writing one JSON line per run to `log`. Stop with SIGTERM."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aifactory.cli.main",
                "health",
                spec,
                "--every",
                f"{every:g}",
                "--format",
                "json",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd="/",
        )
