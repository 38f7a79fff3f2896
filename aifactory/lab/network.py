"""The lab's wires: a fabric namespace holding one bridge per fabric, one namespace per host with a
veth into each of its fabrics (named as the plan names the interface), and one BMC namespace per BMC
fabric holding the BMC addresses. No namespace gets a default route, and nothing is linked to the
machine's own namespace, so lab traffic can reach lab addresses only.
"""

from __future__ import annotations

from dataclasses import dataclass

from aifactory.lab.journal import Journal
from aifactory.lab.names import LabNames
from aifactory.lab.system import ip, netns_exists
from aifactory.plan.model import Host, SitePlan


@dataclass(frozen=True)
class BmcFabric:
    fabric: str
    namespace: str
    interface: str
    addresses: list[tuple[str, str, int]]  # (host, address, prefixlen)


def bmc_fabrics(plan: SitePlan, names: LabNames) -> list[BmcFabric]:
    by_fabric: dict[str, list[tuple[str, str, int]]] = {}
    for host in plan.hosts:
        if host.bmc is not None:
            prefixlen = plan.fabric(host.bmc.fabric).prefixlen
            by_fabric.setdefault(host.bmc.fabric, []).append((host.name, host.bmc.address, prefixlen))
    return [BmcFabric(f, names.bmc_ns(f), _short(f), hosts) for f, hosts in by_fabric.items()]


def _short(name: str) -> str:
    return name[:15]


def fabrics_in_use(plan: SitePlan) -> list[str]:
    used = {i.fabric for h in plan.hosts for i in h.interfaces}
    used |= {h.bmc.fabric for h in plan.hosts if h.bmc is not None}
    return [f.name for f in plan.fabrics if f.name in used]


def add_netns(name: str, journal: Journal) -> None:
    journal.add("netns", name)  # written down first: a crash right after still gets it removed
    if not netns_exists(name):
        ip("netns", "add", name)
    ip("link", "set", "lo", "up", netns=name)


def _address(netns: str, device: str, address: str, prefixlen: int) -> None:
    extra = ["nodad"] if ":" in address else []
    ip("addr", "add", f"{address}/{prefixlen}", "dev", device, *extra, netns=netns)


def _veth(fabric_ns: str, port: str, bridge: str, peer: str, peer_ns: str) -> None:
    ip("link", "add", port, "type", "veth", "peer", "name", peer, "netns", peer_ns, netns=fabric_ns)
    ip("link", "set", port, "master", bridge, "up", netns=fabric_ns)
    ip("link", "set", peer, "up", netns=peer_ns)


def add_host(plan: SitePlan, names: LabNames, host: Host, journal: Journal) -> None:
    """A host's namespace, wired into each of its fabrics with its planned addresses (the fabric
    namespace and its bridges exist). A host brought back into a running lab gets the same wires:
    the fabric ends of its old ones went with its old namespace."""
    host_ns = names.host_ns(host.name)
    add_netns(host_ns, journal)
    for index, interface in enumerate(host.interfaces):
        port = names.host_port(plan, host, index)
        _veth(names.fabric_ns, port, names.bridge(plan, interface.fabric), interface.name, host_ns)
        _address(host_ns, interface.name, interface.address, interface.prefixlen)


def build_network(plan: SitePlan, names: LabNames, journal: Journal) -> None:
    fabric_ns = names.fabric_ns
    add_netns(fabric_ns, journal)
    for fabric in fabrics_in_use(plan):
        bridge = names.bridge(plan, fabric)
        ip("link", "add", bridge, "type", "bridge", netns=fabric_ns)
        ip("link", "set", bridge, "up", netns=fabric_ns)
    for host in plan.hosts:
        add_host(plan, names, host, journal)
    for bmc in bmc_fabrics(plan, names):
        add_netns(bmc.namespace, journal)
        _veth(
            fabric_ns,
            names.bmc_port(plan, bmc.fabric),
            names.bridge(plan, bmc.fabric),
            bmc.interface,
            bmc.namespace,
        )
        for _, address, prefixlen in bmc.addresses:
            _address(bmc.namespace, bmc.interface, address, prefixlen)
