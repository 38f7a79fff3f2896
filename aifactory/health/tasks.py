"""What each host checks, worked out once from the plan and the Connection (never on the host)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aifactory.connection import Connection
from aifactory.health.thresholds import (
    Threshold,
    compute_fabric,
    nvidia_smi_product,
    thresholds_for,
    tightened,
)
from aifactory.plan.model import Host, SitePlan
from aifactory.runtime.health.model import HostTask, Level, Link, Peer
from aifactory.spec.model import HealthThreshold

COMPUTE_ROLES = ("gpu", "cpu")  # the hosts Slurm schedules on
# The runtime role's inference service (runtime_service_name): checked where deploy installed it.
RUNTIME_SERVICE = "aifactory-serve"
# Disk and inode headroom: the root, /var (logs, spools, the runtime's state) and /tmp (jobs' and
# tools' scratch: a full /tmp fails jobs as surely as a full root).
CHECKED_PATHS = ("/", "/var", "/tmp")
IPERF_PORT = 5201
# The checks of every GPU host (gpu-model-mismatch too where the plan names the model).
GPU_CHECKS = (
    "gpu-count",
    "gpu-ecc-uncorrectable",
    "gpu-memory-retirement-pending",
    "gpu-xid-events",
    "gpu-hw-slowdown",
    "gpu-power-limit",
    "gpu-memory-total",
)
FIO_SIZE_MIB = {"quick": 32, "standard": 64, "burn-in": 1024}


@dataclass(frozen=True)
class HostPlan:
    """One host's task and how its results are judged."""

    host: Host
    task: HostTask
    thresholds: dict[str, Threshold]
    expected: tuple[str, ...]

    def policy_thresholds(self) -> dict[str, Any]:
        return {check: threshold.as_policy() for check, threshold in sorted(self.thresholds.items())}


def services_for(host: Host, connection: Connection) -> tuple[str, ...]:
    """The services the deployed roles run on this host (munge and slurm roles, base's chronyd)."""
    names = ["munge"]
    if host.role == "control":
        names.append("slurmctld")
    if host.role in COMPUTE_ROLES:
        names.append("slurmd")
    if connection.services.manager == "systemd":  # the base role runs chronyd only under systemd
        names.append("chrony")
    return tuple(names)


def peers_of(plan: SitePlan, host: Host) -> tuple[Peer, ...]:
    """Every other host, on every fabric both are on."""
    mine = {interface.fabric for interface in host.interfaces}
    peers = []
    for other in plan.hosts:
        if other.name == host.name:
            continue
        for interface in other.interfaces:
            if interface.fabric in mine and interface.rail == 0:
                peers.append(Peer(other.name, interface.fabric, interface.address))
    return tuple(peers)


def bandwidth_ring(plan: SitePlan, hosts: list[Host]) -> dict[str, tuple[Peer, str]]:
    """For each host on a compute fabric: the next host on that fabric (the one it sends to) and its
    own address there. A ring, so every host's iperf3 server gets exactly one client."""
    ring: dict[str, tuple[Peer, str]] = {}
    by_fabric: dict[str, list[tuple[Host, str]]] = {}
    for host in hosts:
        fabric = compute_fabric(plan, host)
        if fabric is None:
            continue
        address = next(i.address for i in host.interfaces if i.fabric == fabric.name and i.rail == 0)
        by_fabric.setdefault(fabric.name, []).append((host, address))
    for fabric_name, members in by_fabric.items():
        if len(members) < 2:
            continue
        for index, (host, address) in enumerate(members):
            target, target_address = members[(index + 1) % len(members)]
            ring[host.name] = (Peer(target.name, fabric_name, target_address), address)
    return ring


def pool_sizes(plan: SitePlan, hosts: list[Host]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for host in hosts:
        if host.role in COMPUTE_ROLES and compute_fabric(plan, host) is not None:
            sizes[host.pool] = sizes.get(host.pool, 0) + 1
    return sizes


def plan_hosts(
    plan: SitePlan,
    hosts: list[Host],
    *,
    level: Level,
    connection: Connection,
    table: dict[str, Any],
    tightenings: Sequence[HealthThreshold] = (),
) -> list[HostPlan]:
    ring = bandwidth_ring(plan, hosts)
    sizes = pool_sizes(plan, hosts)
    plans = []
    for host in hosts:
        services = services_for(host, connection)
        pair = ring.get(host.name)
        task = HostTask(
            host=host.name,
            level=level,
            services=services,
            deployed_services=(RUNTIME_SERVICE,),
            service_manager=connection.services.manager,
            service_command=connection.services.command,
            paths=CHECKED_PATHS,
            storage=tuple(sorted({mount.path for mount in host.mounts})),
            peers=peers_of(plan, host),
            links=tuple(Link(i.fabric, i.name) for i in host.interfaces),
            bandwidth_peer=pair[0] if pair else None,
            bandwidth_listen=pair[1] if pair else None,
            iperf_port=IPERF_PORT,
            fio_size_mib=FIO_SIZE_MIB[level],
            gpus_expected=host.gpus.count if host.gpus else 0,
            gpu_model=nvidia_smi_product(plan, host, table) if host.gpus else None,
        )
        expected = expected_checks(task, collective=level != "quick" and sizes.get(host.pool, 0) >= 2)
        rows = tightened(thresholds_for(plan, host, table), host.pool, tightenings)
        plans.append(HostPlan(host, task, rows, expected))
    return plans


def expected_checks(task: HostTask, *, collective: bool) -> tuple[str, ...]:
    """The checks whose values the verdict needs: one missing is a failure."""
    checks = ["clock-offset", "disk-free", "inodes-free", "memory-available"]
    if task.services:
        checks.append("service-running")
    if task.links:
        checks.append("link-up")
    if task.peers:
        checks.append("fabric-unreachable")
    if task.storage:
        checks.append("storage-mounted-rw")
        if task.fio_size_mib > 0:
            checks += ["storage-write", "storage-read"]
    if task.bandwidth_peer is not None:
        checks.append("tcp-bandwidth")
    if collective:
        checks.append("allreduce-busbw")
    if task.gpus_expected:
        checks += GPU_CHECKS
        if task.gpu_model:
            checks.append("gpu-model-mismatch")
    return tuple(sorted(checks))
